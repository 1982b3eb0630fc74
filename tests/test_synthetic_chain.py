"""data/synthetic_chain.py: the multi-step task with parallel headroom."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
from t3d.tasks import synthetic_chain as chain  # noqa: E402


def test_solutions_of_one_problem_by_hand():
    sols = chain.solutions(47, 38, 25, 16)
    assert len(sols) == 12 and len(set(sols)) == 12
    assert sols[0] == "First, 47+38=85. Then, 85+25=110. Finally, 110+16=126. The answer is \\boxed{126}."
    assert sols[4] == "Step 1: 16+25=41. Step 2: 41+38=79. Step 3: 79+47=126. So the total is \\boxed{126}."
    assert sols[8] == "We add 47+38=85, then 25+16=41, and then 85+41=126. Hence the sum is \\boxed{126}."
    assert sols[9] == "First, 47+16=63. Then, 38+25=63. Finally, 63+63=126. The answer is \\boxed{126}."


def test_every_written_step_is_correct_and_uses_earlier_results():
    for item in chain.make_items(50, 3, "val"):
        assert item["solution"] in item["solutions"]
        for text in item["solutions"]:
            steps = [tuple(map(int, m)) for m in re.findall(r"(\d+)\+(\d+)=(\d+)", text)]
            assert len(steps) == 3 and all(x + y == z for x, y, z in steps)
            assert steps[-1][2] == int(item["ground_truth_answer"]) == sum(item["operands"])
            assert re.search(r"\\boxed\{(\d+)\}", text).group(1) == item["ground_truth_answer"]


def test_deterministic_prefix_stable_and_seeded():
    first = chain.make_items(120, 7, "train")
    assert first == chain.make_items(120, 7, "train")
    assert first[:40] == chain.make_items(40, 7, "train")
    assert first != chain.make_items(120, 8, "train")


def test_splits_never_share_a_problem_and_held_out_problems_are_distinct():
    key = lambda it: tuple(sorted(it["operands"]))  # noqa: E731
    keys = {s: [key(it) for it in chain.make_items(n, 0, s)] for s, n in
            (("train", 3000), ("val", 300), ("test", 300), ("ood", 300))}
    assert not set(keys["train"]) & (set(keys["val"]) | set(keys["test"]) | set(keys["ood"]))
    assert not set(keys["val"]) & set(keys["test"])
    for split in ("val", "test", "ood"):
        assert len(set(keys[split])) == len(keys[split])
    assert all(chain.split_of(k) == "test" for k in keys["ood"])


def test_ood_questions_use_only_unseen_templates():
    def template_of(question, templates):
        return [i for i, t in enumerate(templates)
                if re.fullmatch(re.escape(t).replace(r"\{a\}", r"\d+").replace(r"\{b\}", r"\d+")
                                .replace(r"\{c\}", r"\d+").replace(r"\{d\}", r"\d+"), question)]
    for item in chain.make_items(60, 0, "ood"):
        assert template_of(item["question"], chain.OOD_QUESTION_STYLES) == [item["question_style"]]
        assert template_of(item["question"], chain.QUESTION_STYLES) == []
    for item in chain.make_items(60, 0, "test"):
        assert template_of(item["question"], chain.QUESTION_STYLES) == [item["question_style"]]


def test_answers_are_long_enough_for_block_8_parallelism():
    from tokenizers import Tokenizer  # the tiny default's tokenizer (transformers' import costs seconds)

    tok = Tokenizer.from_file(str(ROOT / "models" / "sdar-tiny" / "tokenizer.json"))
    lengths = [len(tok.encode(s, add_special_tokens=False).ids) for it in chain.make_items(40, 0, "test")
               for s in it["solutions"]]
    assert min(lengths) >= 48


def test_cli_writes_all_splits_and_rejects_bad_sizes(tmp_path, capsys):
    chain.main(["--train", "5", "--val", "3", "--test", "4", "--ood", "2", "--smoke", "2", "--out_dir", str(tmp_path)])
    sizes = {p.name: len(json.loads(p.read_text())) for p in tmp_path.iterdir()}
    assert sizes == {"synthetic_chain_train.json": 5, "synthetic_chain_val.json": 3, "synthetic_chain_test.json": 4,
                     "synthetic_chain_ood.json": 2, "synthetic_chain_smoke.json": 2}
    smoke = json.loads((tmp_path / "synthetic_chain_smoke.json").read_text())
    assert smoke == json.loads((tmp_path / "synthetic_chain_test.json").read_text())[:2]
    with pytest.raises(SystemExit) as exit_info:
        chain.main(["--val", "-1", "--out_dir", str(tmp_path / "bad")])
    assert exit_info.value.code == 2 and not (tmp_path / "bad").exists()
    assert "synthetic_chain.py: error: val: asked for -1 problems" in capsys.readouterr().err


def test_fresh_draw_is_test_pool_and_disjoint_from_test_and_ood():
    """The fresh split: another stream of the test pool, no operand set of test or ood, ids of its own; the shipped
    data/synthetic_chain_fresh.json is exactly what the generator writes."""
    held = chain.make_items(500, 0, "test") + chain.make_items(400, 0, "ood")
    fresh = chain.make_fresh(500, 0, held)
    keys = [tuple(sorted(it["operands"])) for it in fresh]
    assert len(set(keys)) == 500 and not set(keys) & {tuple(sorted(it["operands"])) for it in held}
    assert all(chain.split_of(k) == "test" for k in keys)
    assert [it["id"] for it in fresh[:2]] == ["synthetic_chain-fresh-0", "synthetic_chain-fresh-1"]
    assert json.loads((ROOT / "data" / "synthetic_chain_fresh.json").read_text(encoding="utf-8")) == fresh
    # a draw that collides with what it must exclude skips those problems and still returns n
    first = chain.make_items(3, 1, "test")
    again = chain.make_fresh(3, 0, first)
    assert len(again) == 3 and not {tuple(sorted(i["operands"])) for i in again} & {
        tuple(sorted(i["operands"])) for i in first}

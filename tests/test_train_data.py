"""Training records: validation (one-line errors naming the record, counted skips), post pads, batching."""
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from t3d.train.data import Collate, EpochShuffle, load_examples, resolve_data_path
from t3d.common.io import DataError
from t3d.tasks.prompting import build_prompt, encode_prompt

REPO = Path(__file__).resolve().parents[1]


def fabricate_records(tokenizer, n, seed=0, block_size=4, replicas=1):
    """Rollout-style records (data/rename_key.py format) with a plausible per-block decoding order: one token
    per step, so S = B."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        item = {"question": f"Compute {a}+{b}."}
        prompt = build_prompt(tokenizer, item, "math")
        p = len(encode_prompt(tokenizer, prompt))
        for rep in range(replicas):
            text = f"{a}+{b}={a + b}. \\boxed{{{a + b}}}"
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            steps, step, j = [0] * len(ids), 0, 0
            while j < len(ids):  # one token per step, random order inside each absolute block
                end = min(len(ids), j + block_size - (p + j) % block_size)
                order = list(range(j, end))
                rng.shuffle(order)
                for pos in order:
                    step += 1
                    steps[pos] = step
                j = end
            records.append({"question": item["question"], "prompt": prompt, "answer": text, "response_ids": ids,
                            "step_map": steps, "source_index": i, "replica": rep, "block_size": block_size,
                            "denoising_steps_per_block": block_size, "remasking_strategy": "low_confidence_static"})
    return records


def write(path, records):
    path.write_text(json.dumps(records))
    return path


LIMITS = dict(max_prompt_len=256, max_gen_length=256, post_num=3, skip_invalid=False, log=lambda *_: None)


def test_examples_keep_ids_and_append_post_pads(tiny, tmp_path):
    _, tok = tiny
    recs = fabricate_records(tok, 3)
    exs = load_examples(write(tmp_path / "r.json", recs), tok, **LIMITS)
    ex, rec = exs[1], recs[1]
    assert ex["index"] == 1 and ex["prompt_ids"] == encode_prompt(tok, rec["prompt"])
    assert ex["response_ids"] == rec["response_ids"] + [tok.pad_token_id] * 3  # ends in EOS -> 3 pads
    assert ex["step_map"] == rec["step_map"] + [max(rec["step_map"]) + 1] * 3  # pads decode last
    assert ex["real_len"] == len(rec["response_ids"])
    # truncated responses lose their EOS: no pads
    short = load_examples(write(tmp_path / "r.json", recs), tok, **{**LIMITS, "max_gen_length": 5})
    assert short[0]["response_ids"] == recs[0]["response_ids"][:5] and short[0]["step_map"] == recs[0]["step_map"][:5]


def test_jsonl_records_are_accepted(tiny, tmp_path):
    _, tok = tiny
    recs = fabricate_records(tok, 2)
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert len(load_examples(path, tok, **LIMITS)) == 2


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("step_map"), "record 1: missing 'step_map'"),
    (lambda r: r["step_map"].pop(), "record 1: step_map has {n} entries but response_ids has {m}"),
    (lambda r: r.update(answer="", response_ids=[], step_map=[]), "record 1: empty answer"),
    (lambda r: r.update(prompt=r["prompt"] * 20), "record 1: prompt has {p} tokens > training.max_prompt_len=256"),
    (lambda r: r.pop("response_ids"), "record 1: missing 'response_ids'"),
    (lambda r: r.update(step_map=[-1] * len(r["step_map"])), "record 1: step_map has the value -1; decoding steps start at 1"),
    (lambda r: r["step_map"].__setitem__(3, 0), "record 1: step_map has the value 0; decoding steps start at 1"),
    # 18 response tokens after a 40-token prompt span 5 blocks of 4: at most 5 x 4 = 20 steps
    (lambda r: r["step_map"].__setitem__(0, 21),
     "record 1: step_map has the value 21 but the response spans 5 blocks of 4 denoising steps (at most 20)"),
    (lambda r: r.update(denoising_steps_per_block=0), "record 1: 'denoising_steps_per_block' must be a positive integer, got 0"),
])
def test_bad_records_give_one_line_errors(tiny, tmp_path, edit, message):
    _, tok = tiny
    recs = fabricate_records(tok, 3)
    edit(recs[1])
    path = write(tmp_path / "r.json", recs)
    with pytest.raises(DataError) as err:
        load_examples(path, tok, **LIMITS)
    text = str(err.value)
    n, m = len(recs[1].get("step_map", [])), len(recs[1].get("response_ids", []))
    p = len(encode_prompt(tok, recs[1]["prompt"]))
    assert f"{path}: " + message.format(n=n, m=m, p=p) in text and "\n" not in text
    # the same file with skipping: counted, summarised, the rest kept
    logs = []
    kept = load_examples(path, tok, **{**LIMITS, "skip_invalid": True, "log": logs.append})
    assert [e["index"] for e in kept] == [0, 2]
    assert logs[0].startswith("r.json: kept 2 of 3 records; skipped 1 (")


def test_step_map_bound_follows_absolute_blocks_and_steps_per_block(tiny, tmp_path):
    _, tok = tiny
    rec = fabricate_records(tok, 1)[0]  # prompt 40 tokens (tail 0), 18 response tokens: 5 blocks
    rec["step_map"] = [20] * 18
    assert len(load_examples(write(tmp_path / "r.json", [rec]), tok, **LIMITS)) == 1  # 20 = 5 x 4: possible
    rec["denoising_steps_per_block"] = 2  # at most 10 steps
    with pytest.raises(DataError, match="value 20 but the response spans 5 blocks of 2 denoising steps"):
        load_examples(write(tmp_path / "r.json", [rec]), tok, **LIMITS)
    rec.pop("denoising_steps_per_block")  # S unknown: only >= 1 is checked
    assert len(load_examples(write(tmp_path / "r.json", [rec]), tok, **LIMITS)) == 1


def test_rollout_block_size_must_match_training(tiny, tmp_path):
    _, tok = tiny
    recs = fabricate_records(tok, 3)
    recs[2]["block_size"] = 8
    path = write(tmp_path / "r.json", recs)
    for skip in (False, True):  # a wrong setting, not a bad record: never skipped
        with pytest.raises(DataError) as err:
            load_examples(path, tok, **{**LIMITS, "skip_invalid": skip})
        assert str(err.value) == (f"{path}: record 2: the rollout's block_size is 8 but training.block_size=4; "
                                  "blocks, trace masks and the path loss must follow the decoder's blocks")
    # records that do not say their block size: trained, with one warning for the file
    for r in recs:
        for key in ("block_size", "denoising_steps_per_block", "remasking_strategy"):
            r.pop(key)
    logs = []
    assert len(load_examples(write(tmp_path / "r.json", recs), tok, **{**LIMITS, "log": logs.append})) == 3
    assert logs[1:] == ["WARNING: 3 of 3 records in r.json do not say their rollout block_size (older or "
                        "original-project rollouts): training.block_size=4 could not be checked against the decoder "
                        "that produced them"]


def test_non_utf8_data_is_one_line(tiny, tmp_path):
    _, tok = tiny
    path = tmp_path / "r.json"
    path.write_bytes(b'[{"prompt": "caf\xe9"}]')  # Latin-1
    with pytest.raises(DataError, match=r"r.json: not UTF-8 text") as err:
        load_examples(path, tok, **LIMITS)
    assert "\n" not in str(err.value)


def test_missing_file_and_all_skipped(tiny, tmp_path):
    _, tok = tiny
    with pytest.raises(DataError, match=r"not found: .*data/nope.json \(dataset.optimization_data='nope'\)"):
        resolve_data_path("nope")
    assert resolve_data_path(str(write(tmp_path / "x.json", []))) == tmp_path / "x.json"
    recs = fabricate_records(tok, 2)
    for r in recs:
        r.pop("step_map")
    with pytest.raises(DataError, match="no usable records"):
        load_examples(write(tmp_path / "r.json", recs), tok, **{**LIMITS, "skip_invalid": True})


def test_sft_items_become_prompt_plus_solution_plus_eos(tiny, tmp_path):
    _, tok = tiny
    items = [{"question": "Compute 1+2.", "solution": "1+2=3. \\boxed{3}"}, {"question": "Add 4.", "answer": "4"}]
    exs = load_examples(write(tmp_path / "i.json", items), tok, kind="sft", **LIMITS)
    assert exs[0]["prompt_ids"] == encode_prompt(tok, build_prompt(tok, items[0], "math"))
    body = tok(items[0]["solution"], add_special_tokens=False)["input_ids"]
    assert exs[0]["response_ids"] == body + [tok.eos_token_id] + [tok.pad_token_id] * 3
    assert exs[1]["response_ids"][:2] == tok("4", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with pytest.raises(DataError, match=r"record 0: empty answer \(no non-empty solution or answer\)"):
        load_examples(write(tmp_path / "i.json", [{"question": "q", "solution": " "}]), tok, kind="sft", **LIMITS)


def test_collate_pads_per_batch():
    exs = [
        {"index": 4, "prompt_ids": [5, 6, 7], "response_ids": [8, 9], "step_map": [2, 1], "real_len": 2},
        {"index": 9, "prompt_ids": [5], "response_ids": [8, 9, 10, 0], "step_map": [1, 3, 2, 4], "real_len": 3},
    ]
    b = Collate(pad_id=0)(exs)
    assert b["prompt_ids"].tolist() == [[5, 6, 7], [0, 0, 5]] and b["prompt_len"].tolist() == [3, 1]
    assert b["response_ids"].tolist() == [[8, 9, 0, 0], [8, 9, 10, 0]] and b["response_len"].tolist() == [2, 4]
    assert b["step_map"].tolist() == [[2, 1, 0, 0], [1, 3, 2, 4]]
    assert b["index"].tolist() == [4, 9] and b["real_len"].tolist() == [2, 3]


def test_epoch_shuffle_is_a_function_of_seed_and_epoch():
    s = EpochShuffle(20, seed=7)
    first = list(s)
    assert sorted(first) == list(range(20)) and list(s) == first
    s.set_epoch(1)
    assert list(s) != first
    s.set_epoch(0)
    assert list(s) == first and list(EpochShuffle(20, seed=8)) != first


def _cli(*args, cwd=REPO):
    cmd = [sys.executable, "train/self_ddo_sdar_full.py", "config=configs/ddo_sdar_full_self.yaml", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_reports_bad_input_in_one_line(tiny_dir, tmp_path):
    from t3d.model.checkpoint import load_tokenizer

    recs = fabricate_records(load_tokenizer(str(tiny_dir)), 3)
    recs[2]["step_map"] = recs[2]["step_map"][:-1]
    path = write(tmp_path / "bad.json", recs)
    out = _cli(f"dataset.optimization_data={path}", f"model.pretrained_model={tiny_dir}",
               f"experiment.output_dir={tmp_path}/exp")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        f"self_ddo_sdar_full.py: error: {path}: record 2: step_map has {len(recs[2]['step_map'])} entries but "
        f"response_ids has {len(recs[2]['response_ids'])} "
        "(set training.skip_invalid_records=true to skip such records)")
    missing = _cli(f"dataset.optimization_data={tmp_path}/none", f"experiment.output_dir={tmp_path}/exp")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("self_ddo_sdar_full.py: error: training data not found")
    assert not (tmp_path / "exp").exists()

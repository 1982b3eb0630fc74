import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import t3d.eval.evaluate as evaluation
import t3d.decode.rollout as rollout_mod
from t3d.common.paths import CHECKOUT as REPO_ROOT
from t3d.common.config import ConfigError, load_config
from t3d.decode.decoder import DecodeOutput
from t3d.common.io import DataError
from t3d.decode.settings import RolloutJob
from t3d.eval.evaluate import aup_rows, checkpoint_list, run_eval_job, sweep_settings
from t3d.eval.layout import result_settings
from t3d.eval.settings import EvalJob
from t3d.model.checkpoint import content_fingerprint

MATH = [{"id": f"q{a}", "question": f"What is {a}+{a}?", "ground_truth_answer": str(2 * a)} for a in (1, 2, 3)]


def eval_cfg(tmp_path, ckpt, data, *overrides):
    return load_config([
        f"config={REPO_ROOT}/configs/eval.yaml", f"evaluation.checkpoint_path={ckpt}",
        f"evaluation.eval_dataset={data}", f"experiment.output_dir={tmp_path}/out", "rollout.max_token=8",
        *overrides,
    ])


def write(path, items):
    path.write_text(json.dumps(items))
    return path


def weights_id(ckpt):
    """The checkpoint's part of a result folder's name: the start of its weights fingerprint."""
    return content_fingerprint(ckpt)["weights"][:8]


def data_id(items):
    return rollout_mod.data_digest(items)[:8]


def fake_decoder(tokenizer, answers, nfes):
    """A stand-in for the decoder: the n-th decode of a question's prompt returns answers[question][n]
    (replicas of one item are decoded in replica order) with NFE nfes[question][n]."""
    seen = Counter()

    def generate(model, prompts, cfg, *, mask_id, pad_id, stop_ids=(), seeds=None, **kw):
        out = DecodeOutput(batch_forwards=7)
        for ids in prompts:
            text = tokenizer.decode(ids)
            question = next(q for q in answers if q in text)
            r = seen[question]
            seen[question] += 1
            out.token_ids.append(tokenizer(answers[question][r], add_special_tokens=False)["input_ids"]
                                 + [tokenizer.eos_token_id])
            out.step_maps.append(list(range(1, len(out.token_ids[-1]) + 1)))
            out.nfe.append(nfes[question][r])
            out.prefill_nfe.append(1)
            out.finished.append(True)
        return out

    return generate


def count_setups(monkeypatch):
    calls = []
    real = evaluation.setup

    def counting(path, *args):
        calls.append(str(path))
        return real(path, *args)

    monkeypatch.setattr(evaluation, "setup", counting)
    return calls


def test_metrics_of_a_fixed_run_equal_hand_computed_values(tmp_path, tiny_dir, tiny, monkeypatch):
    _, tokenizer = tiny
    answers = {  # gold: 2, 4, 6
        "What is 1+1?": ["so \\boxed{2}", "so \\boxed{3}"],   # 1 of 2 correct
        "What is 2+2?": ["\\boxed{4}", "it is \\boxed{4.0}"],  # 2 of 2
        "What is 3+3?": ["no idea", "\\boxed{5}"],            # 0 of 2, one without an answer
    }
    nfes = {"What is 1+1?": [3, 5], "What is 2+2?": [2, 2], "What is 3+3?": [4, 4]}
    monkeypatch.setattr(rollout_mod, "generate", fake_decoder(tokenizer, answers, nfes))
    setups = count_setups(monkeypatch)
    data = write(tmp_path / "toy.json", MATH)
    rows = run_eval_job(eval_cfg(tmp_path, tiny_dir, data, "rollout.num_response_per_task=2"))
    assert len(rows) == 1 and len(setups) == 1
    m = rows[0]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for q in answers for t in answers[q]]
    assert m["items"] == 3 and m["responses"] == 6 and m["failed_items"] == 0
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["pass@1"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["pass@2"] == pytest.approx((1 + 1 + 0) / 3)
    assert m["answer_rate"] == pytest.approx(5 / 6) and m["finished_rate"] == 1.0
    assert m["mean_nfe"] == pytest.approx(20 / 6)
    assert m["mean_response_length"] == pytest.approx(sum(lengths) / 6)
    assert m["tokens_per_forward"] == pytest.approx(sum(lengths) / 20)
    assert m["tokens_per_forward_no_prefill"] == pytest.approx(sum(lengths) / (20 - 6))  # one prefill each
    assert m["tokens_per_second"] == pytest.approx(sum(lengths) / m["decode_seconds"])
    assert m["setting"] == "S=1" and m["block_size"] == 4 and m["batch_forwards"] == 7

    run_dir = (tmp_path / "out/eval/results" / f"{tiny_dir.name}-{weights_id(tiny_dir)}" / f"toy-{data_id(MATH)}"
               / "B4-S1-low_confidence_static-T0.1-len8-k2-seed0")
    assert m["run_dir"] == str(run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "items.jsonl", "metrics.json", "metrics.md"]
    assert json.loads((run_dir / "metrics.json").read_text()) == m
    assert "| accuracy | 0.5000 |" in (run_dir / "metrics.md").read_text()
    records = [json.loads(line) for line in (run_dir / "items.jsonl").read_text().splitlines()]
    assert [(r["index"], r["replica"], r["correct"]) for r in records] == [
        (0, 0, True), (0, 1, False), (1, 0, True), (1, 1, True), (2, 0, False), (2, 1, False)]
    assert [r["extracted"] for r in records][-2:] == ["Can not extract the answer!", "5"]
    assert records[0]["gold"] == "2" and records[0]["id"] == "q1" and records[0]["nfe"] == 3
    assert records[0]["output"] == "so \\boxed{2}<|im_end|>" and records[0]["length"] == lengths[0]
    assert records[0]["prompt"].endswith("<|im_start|>assistant\n") and len(records[0]["step_map"]) == lengths[0]
    assert not list(run_dir.glob("*.partial*"))


def test_sweep_over_checkpoints_and_settings_writes_table_and_plot(tmp_path, tiny_dir, monkeypatch):
    setups = count_setups(monkeypatch)
    data = write(tmp_path / "toy.json", MATH[:2])
    cfg = eval_cfg(tmp_path, tiny_dir, data, f"sweep.checkpoints=[base={tiny_dir},t3d={tiny_dir}]",
                   "sweep.denoising_steps=[4,2,1]", "sweep.dynamic_thresholds=[0.5]", "rollout.temperature=0.0")
    rows = run_eval_job(cfg)
    assert len(setups) == 2  # each checkpoint loaded once for its four settings
    assert [(r["checkpoint"], r["setting"]) for r in rows] == [
        (c, s) for c in ("base", "t3d") for s in ("S=4", "S=2", "S=1", "τ=0.5")]
    by = {(r["checkpoint"], r["setting"]): r for r in rows}
    # fewer steps per block: fewer forwards per decoded token
    tpf = [by["base", s]["tokens_per_forward"] for s in ("S=4", "S=2", "S=1")]
    assert tpf[0] < tpf[1] < tpf[2]
    for s in ("S=4", "S=2", "S=1", "τ=0.5"):  # same weights, same seed: identical results
        assert {k: v for k, v in by["base", s].items() if "second" not in k and k not in ("checkpoint", "run_dir")} == \
               {k: v for k, v in by["t3d", s].items() if "second" not in k and k not in ("checkpoint", "run_dir")}
    results = tmp_path / "out/eval/results"
    toy = f"toy-{data_id(MATH[:2])}"
    assert (results / f"base-{weights_id(tiny_dir)}" / toy / "B4-S4-low_confidence_static-T0-len8-k1-seed0/metrics.json").is_file()
    assert (results / f"t3d-{weights_id(tiny_dir)}" / toy / "B4-S4-low_confidence_dynamic-tau0.5-T0-len8-k1-seed0/items.jsonl").is_file()
    (sweep,) = results.glob("sweep-toy-*")
    table = (sweep / "sweep.md").read_text().splitlines()
    assert table[0] == "# toy: block size 4" and table[2].startswith("| checkpoint | setting | accuracy |")
    assert len([line for line in table[2:12] if line.startswith("| base") or line.startswith("| t3d")]) == 8
    scores = aup_rows(rows)  # numbers: test_aup_per_method_of_a_sweep_equals_hand_computed_values
    assert all(f"| {s['method']} | {s['aup']:.2f} |" in "\n".join(table) for s in scores)
    assert json.loads((sweep / "sweep.json").read_text()) == {"rows": rows, "aup": scores}
    png = (sweep / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert (sweep / "config.yaml").is_file()


def test_hub_split_and_column_mapping_key_the_results(tmp_path):
    cfg = eval_cfg(tmp_path, "models/sdar-tiny", "hub:openai/gsm8k", "evaluation.dataset_subset=main",
                   "evaluation.dataset_split=test", "evaluation.dataset_answer_format=gsm8k",
                   "evaluation.dataset_columns.ground_truth_answer=answer")
    job = EvalJob.from_config(cfg)
    assert job.dataset.name == "gsm8k-main-test"  # another split: another result directory
    assert RolloutJob.from_config(cfg).output_path.name == "outputs-eval-sdar-tiny-gsm8k-main-test.json"  # and rollout file
    settings = result_settings(job.rollout, job.dataset, job.execute, "hub:openai/gsm8k", "models/sdar-tiny")
    assert settings["evaluation.dataset_split"] == "test" and settings["evaluation.dataset_subset"] == "main"
    assert settings["evaluation.dataset_columns"] == {"ground_truth_answer": "answer"}
    assert settings["evaluation.dataset_answer_format"] == "gsm8k"
    plain = eval_cfg(tmp_path, "models/sdar-tiny", "data/synthetic_math_test.json")
    plain_job = EvalJob.from_config(plain)
    assert plain_job.dataset.name == "synthetic_math_test"
    assert not any(k.startswith("evaluation.dataset_") for k in result_settings(
        plain_job.rollout, plain_job.dataset, plain_job.execute, "x", "y"))


def test_aup_per_method_of_a_sweep_equals_hand_computed_values():
    def row(checkpoint, kind, setting, tpf, acc):
        return {"checkpoint": checkpoint, "sweep_kind": kind, "setting": setting, "tokens_per_forward": tpf,
                "accuracy": acc}
    rows = [row("base", "steps", "S=4", 1.0, 0.90), row("base", "steps", "S=1", 3.0, 0.88),
            row("base", "threshold", "τ=0.9", 1.5, 1.00),  # alone: no area, but it sets y_max = 100
            row("t3d", "steps", "S=4", 1.0, 0.90), row("t3d", "steps", "S=1", 3.0, 0.80)]
    scores = aup_rows(rows)
    assert [(s["method"], s["points_used"], s["points"], s["y_max"]) for s in scores] == [
        ("base", 2, 2, 100.0), ("t3d", 1, 2, 100.0)]
    # base: 1 * 90 + 1/2 (3 - 1)(88 exp(-3 * 0.12) + 90 exp(-3 * 0.1)); t3d: 80 < 90 - 5 is dropped
    assert scores[0]["aup"] == pytest.approx(218.0691565556, abs=1e-9)
    assert scores[1]["aup"] == pytest.approx(90.0)
    assert aup_rows([row("base", "steps", "S=4", 1.0, 0.0), row("base", "steps", "S=1", 3.0, 0.0)]) == []


def test_crashing_code_samples_do_not_stop_the_others(tmp_path, tiny_dir, tiny, monkeypatch):
    _, tokenizer = tiny
    fence = "```python\n{}\n```"
    answers = {"Write add(a, b).": [fence.format("def add(a, b):\n    return a + b"),
                                    fence.format("import os\nos._exit(0)"),
                                    fence.format("import sys\nsys.exit(0)"),
                                    fence.format("def add(a, b):\n    raise RuntimeError('boom')")],
               "Write sub(a, b).": ["no code at all"] * 2 + [fence.format("def sub(a, b):\n    return a - b")] * 2}
    nfes = {q: [1, 1, 1, 1] for q in answers}
    monkeypatch.setattr(rollout_mod, "generate", fake_decoder(tokenizer, answers, nfes))
    data = write(tmp_path / "code.json", [
        {"question": "Write add(a, b).", "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]},
        {"question": "Write sub(a, b).", "test_list": ["assert sub(3, 1) == 2"]},
    ])
    rows = run_eval_job(eval_cfg(tmp_path, tiny_dir, data, "evaluation.data_type=code",
                                 "rollout.num_response_per_task=4", "execute.num_chunk=2"))
    m = rows[0]
    assert m["accuracy"] == pytest.approx(3 / 8) and m["answer_rate"] == pytest.approx(6 / 8)
    assert m["pass@1"] == pytest.approx((1 / 4 + 2 / 4) / 2) and m["pass@4"] == 1.0
    records = (Path(m["run_dir"]) / "items.jsonl").read_text().splitlines()
    assert [json.loads(r)["correct"] for r in records] == [True, False, False, False, False, False, True, True]


@pytest.mark.parametrize("override, message", [
    ("evaluation.eval_dataset=NoSuchSet", "dataset 'NoSuchSet': no file"),
    ("evaluation.eval_dataset=/nonexistent/x.json", "x.json: file not found"),
    ("evaluation.data_type=poetry", "evaluation.data_type must be one of math, option, code, got 'poetry'"),
])
def test_bad_dataset_and_data_type_are_one_line_errors(tmp_path, tiny_dir, override, message):
    data = write(tmp_path / "toy.json", MATH)
    with pytest.raises((DataError, ConfigError), match=message) as err:
        run_eval_job(eval_cfg(tmp_path, tiny_dir, data, override))
    assert "\n" not in str(err.value)


def test_items_without_answers_or_tests_are_named(tmp_path, tiny_dir):
    data = write(tmp_path / "toy.json", [MATH[0], {"id": "x7", "question": "What is 5+5?"}])
    with pytest.raises(DataError, match=r"toy.json: item 1 \(id x7\): no 'ground_truth_answer'"):
        run_eval_job(eval_cfg(tmp_path, tiny_dir, data))
    code = write(tmp_path / "code.json", [{"question": "Write f."}])
    with pytest.raises(DataError, match=r"code.json: item 0: function code item needs a non-empty 'test_list'"):
        run_eval_job(eval_cfg(tmp_path, tiny_dir, code, "evaluation.data_type=code"))


def test_cli_exits_2_with_one_line_before_loading_any_model(tmp_path):
    data = write(tmp_path / "toy.json", [{"question": "What is 5+5?"}])
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "eval.py"), f"config={REPO_ROOT}/configs/eval.yaml",
                           f"evaluation.eval_dataset={data}", "evaluation.checkpoint_path=/no/such/model"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"eval.py: error: {data}: item 0: no 'ground_truth_answer' to grade "
                                                "against (data_type=math)"]


def test_checkpoint_and_setting_lists(tmp_path):
    def cfg(*overrides):
        return load_config([f"config={REPO_ROOT}/configs/eval.yaml", *overrides])

    assert checkpoint_list(cfg()) == [("sdar-tiny", "models/sdar-tiny")]
    assert checkpoint_list(cfg("evaluation.checkpoint_path=JetLM/SDAR-4B-Chat")) == [("SDAR-4B-Chat", "JetLM/SDAR-4B-Chat")]
    assert checkpoint_list(cfg("sweep.checkpoints=[models/sdar-tiny,t3d=exp/ckpt/optimized]")) == [
        ("sdar-tiny", "models/sdar-tiny"), ("t3d", "exp/ckpt/optimized")]
    yaml = tmp_path / "e.yaml"
    yaml.write_text((REPO_ROOT / "configs/eval.yaml").read_text().replace(
        "checkpoints: null", "checkpoints: {base: models/sdar-tiny, t3d: exp/optimized}"))
    assert checkpoint_list(load_config([f"config={yaml}"])) == [("base", "models/sdar-tiny"), ("t3d", "exp/optimized")]
    with pytest.raises(ConfigError, match="several checkpoints are named 'optimized'"):
        checkpoint_list(cfg("sweep.checkpoints=[a/optimized,b/optimized]"))

    labels = [s.label for s in sweep_settings(cfg("sweep.denoising_steps=[4,2,1,2]", "sweep.dynamic_thresholds=[0.9]"))]
    assert labels == ["S=4", "S=2", "S=1", "τ=0.9"]
    assert [(s.steps, s.strategy) for s in sweep_settings(cfg("sweep.dynamic_thresholds=[0.8]"))] == [
        (1, "low_confidence_static"), (4, "low_confidence_dynamic")]
    with pytest.raises(ConfigError, match="sweep.denoising_steps must be a non-empty list"):
        sweep_settings(cfg("sweep.denoising_steps=[a]"))
    with pytest.raises(ConfigError, match="model_base 'llada' is not supported"):
        run_eval_job(cfg("model_base=llada"))


def test_an_undecodable_item_counts_wrong_and_the_others_are_graded(tmp_path, tiny_dir, tiny, monkeypatch, capsys):
    _, tokenizer = tiny
    long_q = "What is 9+9? " + "Think hard. " * 40
    answers = {"What is 1+1?": ["\\boxed{2}"], "What is 2+2?": ["\\boxed{4}"]}
    monkeypatch.setattr(rollout_mod, "generate", fake_decoder(tokenizer, answers, {q: [2] for q in answers}))
    data = write(tmp_path / "toy.json", MATH[:2] + [{"question": long_q, "ground_truth_answer": "18"}])
    # context 1024: the short prompts fit with 950 new tokens, the long one does not
    m = run_eval_job(eval_cfg(tmp_path, tiny_dir, data, "rollout.max_token=950"))[0]
    assert (m["items"], m["failed_items"], m["accuracy"], m["answer_rate"]) == (3, 1, 2 / 3, 2 / 3)
    assert "item 2: prompt of" in capsys.readouterr().err
    records = (Path(m["run_dir"]) / "items.jsonl").read_text().splitlines()
    assert json.loads(records[2])["error"].startswith("item 2: prompt of") and not json.loads(records[2])["correct"]


def test_evaluations_of_other_settings_into_one_output_dir_keep_their_results(tmp_path, tiny_dir, capsys):
    data = write(tmp_path / "toy.json", MATH[:2])
    s4 = run_eval_job(eval_cfg(tmp_path, tiny_dir, data, "rollout.denoising_steps_per_block=4"))[0]
    s1 = run_eval_job(eval_cfg(tmp_path, tiny_dir, data, "rollout.denoising_steps_per_block=1"))[0]
    assert Path(s4["run_dir"]).name == "B4-S4-low_confidence_static-T0.1-len8-k1-seed0"
    assert Path(s1["run_dir"]).name == "B4-S1-low_confidence_static-T0.1-len8-k1-seed0"
    for row in (s4, s1):  # both results kept, each with its own settings
        assert json.loads((Path(row["run_dir"]) / "metrics.json").read_text()) == row
    assert s4["mean_nfe"] > s1["mean_nfe"]
    again = run_eval_job(eval_cfg(tmp_path, tiny_dir, data, "rollout.denoising_steps_per_block=1"))[0]
    assert {k: v for k, v in again.items() if "seconds" not in k and "per_second" not in k} == \
           {k: v for k, v in s1.items() if "seconds" not in k and "per_second" not in k}  # same settings: rerun
    # a setting the directory name leaves out still keeps a finished result from being replaced
    with pytest.raises(ConfigError) as err:
        run_eval_job(eval_cfg(tmp_path, tiny_dir, data, "rollout.denoising_steps_per_block=1", "execute.memory_mb=512"))
    assert str(err.value) == (f"{s1['run_dir']}/metrics.json holds a result of other settings: execute.memory_mb=1024 "
                              "(now 512); choose another experiment.project or output_dir, or pass evaluation.restart=true "
                              "to replace it")
    replaced = run_eval_job(eval_cfg(tmp_path, tiny_dir, data, "rollout.denoising_steps_per_block=1",
                                     "execute.memory_mb=512", "evaluation.restart=true"))[0]
    assert replaced["settings"]["execute.memory_mb"] == 512 and replaced["run_dir"] == s1["run_dir"]


def test_eval_resume_refuses_another_tokenizer_and_other_weights_get_their_own_folder(tmp_path, tiny_dir, monkeypatch,
                                                                                       capsys):
    """Weights name the result folder: other weights at the same path are evaluated beside the earlier (interrupted
    or finished) result, which is kept; a change the folder name leaves out (the tokenizer) is refused on resume."""
    import shutil

    from t3d.model.tiny import build

    ckpt, other = tmp_path / "ckpt", tmp_path / "other"
    shutil.copytree(tiny_dir, ckpt)
    build(other, seed=1, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, head_dim=16)
    data = write(tmp_path / "toy.json", MATH)
    real_generate, calls = rollout_mod.generate, []

    def crash_on_second_batch(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real_generate(*args, **kw)

    monkeypatch.setattr(rollout_mod, "generate", crash_on_second_batch)
    with pytest.raises(RuntimeError):
        run_eval_job(eval_cfg(tmp_path, ckpt, data, "rollout.batch_size=1"))
    monkeypatch.setattr(rollout_mod, "generate", real_generate)
    partial = next((tmp_path / "out").rglob("decode.partial.rank0.jsonl"))
    kept = partial.read_bytes()
    tokenizer_config = ckpt / "tokenizer_config.json"
    own_tokenizer = tokenizer_config.read_bytes()
    tokenizer_config.write_text(json.dumps({**json.loads(own_tokenizer), "model_max_length": 4096}))
    with pytest.raises(ConfigError, match=f"^{partial}: partial results of an interrupted run were decoded with another "
                                          rf"tokenizer \(the tokenizer files in {ckpt} changed\); pass evaluation.restart=true"):
        run_eval_job(eval_cfg(tmp_path, ckpt, data, "rollout.batch_size=1"))
    assert partial.read_bytes() == kept
    tokenizer_config.write_bytes(own_tokenizer)

    shutil.copy(other / "model.safetensors", ckpt / "model.safetensors")  # other weights, same path and size
    swapped = run_eval_job(eval_cfg(tmp_path, ckpt, data, "rollout.batch_size=1"))[0]
    fresh = run_eval_job(eval_cfg(tmp_path / "fresh", other, data))[0]
    assert swapped["accuracy"] == fresh["accuracy"] and swapped["mean_nfe"] == fresh["mean_nfe"]
    assert swapped["inputs"]["weights"] == fresh["inputs"]["weights"]
    assert partial.read_bytes() == kept and not partial.parent == Path(swapped["run_dir"])  # the other weights' run
    assert Path(swapped["run_dir"]).parent.parent.name == f"ckpt-{weights_id(other)}"
    shutil.copy(tiny_dir / "model.safetensors", ckpt / "model.safetensors")  # back: the interrupted run resumes
    resumed = run_eval_job(eval_cfg(tmp_path, ckpt, data, "rollout.batch_size=1"))[0]
    assert resumed["run_dir"] == str(partial.parent) and not partial.exists()
    for row in (swapped, resumed):  # both kept, each with its own weights
        assert json.loads((Path(row["run_dir"]) / "metrics.json").read_text()) == row
    capsys.readouterr()
    assert run_eval_job(eval_cfg(tmp_path, ckpt, data, "rollout.batch_size=1"))[0] == resumed  # unchanged: reused
    assert f"S=1: unchanged, finished in {resumed['run_dir']}" in capsys.readouterr().err


def test_plot_with_many_methods_moves_the_legend_beside_the_axes(tmp_path):
    """More than four checkpoints: a wider figure (legend outside the axes); four or fewer: the compact one."""
    import struct

    from t3d.eval.evaluate import plot_sweep

    def width(n):
        rows = [{"checkpoint": f"m{i}", "sweep_kind": kind, "setting": setting, "tokens_per_forward": x,
                 "accuracy": 0.5 - 0.01 * i} for i in range(n)
                for kind, setting, x in (("steps", "S=4", 1.0), ("steps", "S=1", 3.0), ("threshold", "τ=0.9", 2.0))]
        path = tmp_path / f"{n}.png"
        plot_sweep(rows, path, "t", [{"method": "m0", "aup": 1.0}])
        return struct.unpack(">I", path.read_bytes()[16:20])[0]  # PNG IHDR width

    assert width(4) == 7.5 * 150 and width(5) == 11.5 * 150
    # written like every other output: the umask's mode (not mkstemp's 0600), no temp file left beside it
    from t3d.common.io import FILE_MODE

    assert (tmp_path / "4.png").stat().st_mode & 0o777 == FILE_MODE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4.png", "5.png"]

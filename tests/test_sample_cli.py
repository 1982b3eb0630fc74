import json
import subprocess
import sys
from pathlib import Path

import pytest

from t3d.common.paths import CHECKOUT as REPO_ROOT
from t3d.common.config import ConfigError, load_config
from t3d.common.io import DataError
from t3d.decode.rollout import run_rollout_job

QUESTIONS = [{"question": f"What is {a}+{b}?", "ground_truth_answer": str(a + b)}
             for a, b in [(1, 2), (30, 4), (12, 13), (5, 5), (7, 8)]]


def rollout_cfg(tmp_path, ckpt, data, *overrides):
    return load_config([
        f"config={REPO_ROOT}/configs/sdar_sample.yaml", f"evaluation.checkpoint_path={ckpt}",
        f"evaluation.eval_dataset={data}", f"experiment.output_dir={tmp_path}/out", "rollout.max_token=10",
        "rollout.temperature=0.7", "rollout.batch_size=2", "rollout.num_response_per_task=2", *overrides,
    ])


def write(path, items):
    path.write_text(json.dumps(items))
    return path


def test_rollout_file_schema_and_alignment(tmp_path, tiny_dir):
    data = write(tmp_path / "toy.json", QUESTIONS)
    out = run_rollout_job(rollout_cfg(tmp_path, tiny_dir, data))
    assert out.name == f"outputs-eval-{tiny_dir.name}-toy.json"
    items = json.loads(out.read_text())
    assert len(items) == 5 and not list(out.parent.glob("*.partial*"))
    assert (out.parent / f"{out.stem}.config.yaml").is_file()
    for src, item in zip(QUESTIONS, items):
        assert item["question"] == src["question"] and item["ground_truth_answer"] == src["ground_truth_answer"]
        assert item["prompt"].endswith("<|im_start|>assistant\n")
        for key in ("full_output", "step_map", "response_ids", "extracted_output", "response_length", "nfe"):
            assert len(item[key]) == 2, key
        for ids, steps, n in zip(item["response_ids"], item["step_map"], item["response_length"]):
            assert len(ids) == len(steps) == n <= 10


def test_sharded_runs_merged_equal_one_run_and_same_seed_same_output(tmp_path, tiny_dir):
    data = write(tmp_path / "toy.json", QUESTIONS)
    whole = json.loads(run_rollout_job(rollout_cfg(tmp_path, tiny_dir, data)).read_text())
    again = json.loads(run_rollout_job(rollout_cfg(tmp_path / "again", tiny_dir, data)).read_text())
    assert whole == again
    shards = [run_rollout_job(rollout_cfg(tmp_path / f"s{i}", tiny_dir, data, "evaluation.num_node=2",
                                          f"evaluation.node_index={i}")) for i in (1, 0)]
    assert shards[1].name.startswith("outputs-0-eval-")
    merged = tmp_path / "merged.json"
    subprocess.run([sys.executable, str(REPO_ROOT / "utils/merge_shards.py"), "--output", str(merged),
                    *map(str, shards)], check=True, capture_output=True)
    assert json.loads(merged.read_text()) == whole
    other_seed = json.loads(run_rollout_job(rollout_cfg(tmp_path / "seed", tiny_dir, data, "rollout.seed=1")).read_text())
    assert [i["response_ids"] for i in other_seed] != [i["response_ids"] for i in whole]


def test_resume_skips_finished_sequences(tmp_path, tiny_dir, monkeypatch, capsys):
    import t3d.decode.rollout as rollout_mod

    data = write(tmp_path / "toy.json", QUESTIONS)
    expected = json.loads(run_rollout_job(rollout_cfg(tmp_path / "ref", tiny_dir, data)).read_text())
    real_generate, calls, crash = rollout_mod.generate, [], [True]

    def crashing_generate(model, prompts, *args, **kw):
        calls.append(len(prompts))
        if crash[0] and len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real_generate(model, prompts, *args, **kw)

    monkeypatch.setattr(rollout_mod, "generate", crashing_generate)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_rollout_job(rollout_cfg(tmp_path, tiny_dir, data))
    (partial,) = (tmp_path / "out").rglob("*.partial.rank0.jsonl")
    resumed = [json.loads(line) for line in partial.read_text().splitlines() if '"ids"' in line]
    assert not list((tmp_path / "out").rglob("outputs-eval-*.json"))  # nothing half-written
    calls.clear()
    crash[0] = False
    capsys.readouterr()
    out = run_rollout_job(rollout_cfg(tmp_path, tiny_dir, data))
    assert sum(calls) == 10 - 4  # two batches of two were already done
    summary = next(json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"sequences"'))
    total = sum(len(ids) for item in json.loads(out.read_text()) for ids in item["response_ids"])
    decoded = summary["tokens_per_second"] * summary["seconds"]  # the speed of what this run decoded
    assert summary["resumed_sequences"] == 4 and decoded < total
    assert decoded == pytest.approx(total - sum(len(r["ids"]) for r in resumed), rel=1e-3)
    assert out.read_bytes() == (tmp_path / "ref" / out.relative_to(tmp_path)).read_bytes()  # byte-identical
    assert json.loads(out.read_text()) == expected


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory):
    """model.safetensors of a tiny SDAR with the session fixture's shapes but other weights (seed 1)."""
    from t3d.model.tiny import build

    out = tmp_path_factory.mktemp("tiny-sdar-seed1")
    build(out, seed=1, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, head_dim=16)
    return out / "model.safetensors"


def test_resume_refuses_other_weights_data_or_settings_and_restart_starts_fresh(tmp_path, tiny_dir, other_weights,
                                                                               monkeypatch):
    import shutil

    import t3d.decode.rollout as rollout_mod

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, ckpt)
    data = write(tmp_path / "toy.json", QUESTIONS)
    real_generate, calls = rollout_mod.generate, []

    def crash_on_third_batch(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real_generate(*args, **kw)

    monkeypatch.setattr(rollout_mod, "generate", crash_on_third_batch)
    with pytest.raises(RuntimeError):
        run_rollout_job(rollout_cfg(tmp_path, ckpt, data))
    monkeypatch.setattr(rollout_mod, "generate", real_generate)
    partial = next((tmp_path / "out").rglob("*.partial.rank0.jsonl"))
    kept = partial.read_bytes()
    assert len(kept.splitlines()) == 1 + 4  # the fingerprint header + two batches of two sequences

    def refused(message, *overrides):
        with pytest.raises(ConfigError) as err:
            run_rollout_job(rollout_cfg(tmp_path, ckpt, data, *overrides))
        assert str(err.value) == (f"{partial}: partial results of an interrupted run were decoded with {message}; "
                                  "pass evaluation.restart=true to discard them and start fresh")
        assert partial.read_bytes() == kept and not list(partial.parent.glob("outputs-*.json"))

    own_weights = (ckpt / "model.safetensors").read_bytes()
    shutil.copy(other_weights, ckpt / "model.safetensors")  # same path, same size, other weights
    refused(f"other weights (the model files in {ckpt} changed)")
    (ckpt / "model.safetensors").write_bytes(own_weights)
    write(data, QUESTIONS[:4] + [{"question": "What is 9+9?"}])
    refused(f"other data (the items decoded from {data} changed)")
    refused(f"other data (the items decoded from {data} changed)", "evaluation.max_items=4")  # same file, fewer items
    write(data, QUESTIONS)
    refused("rollout.temperature=0.7 (now 0.5)", "rollout.temperature=0.5")
    refused("rollout.num_response_per_task=2 (now 1), rollout.seed=0 (now 3)", "rollout.seed=3",
            "rollout.num_response_per_task=1")

    fresh = run_rollout_job(rollout_cfg(tmp_path / "fresh", ckpt, data, "rollout.temperature=0.5"))
    restarted = run_rollout_job(rollout_cfg(tmp_path, ckpt, data, "rollout.temperature=0.5", "evaluation.restart=true"))
    assert restarted.read_bytes() == fresh.read_bytes() and not partial.exists()
    assert {(i["block_size"], i["denoising_steps_per_block"], i["remasking_strategy"])
            for i in json.loads(restarted.read_text())} == {(4, 4, "low_confidence_static")}


def test_bad_items_are_reported_and_do_not_lose_the_others(tmp_path, tiny_dir, capsys):
    items = QUESTIONS[:2] + [{"no_question": 1}, {"question": ""}] + QUESTIONS[2:3]
    data = write(tmp_path / "mixed.json", items)
    out = json.loads(run_rollout_job(rollout_cfg(tmp_path, tiny_dir, data)).read_text())
    assert [("error" in item) for item in out] == [False, False, True, True, False]
    assert out[2]["error"] == "item 2: missing or empty 'question'"
    assert "skipped item 3" in capsys.readouterr().err


def test_prompt_longer_than_context_is_an_item_error(tmp_path, tiny_dir):
    data = write(tmp_path / "long.json", [{"question": "7 " * 2000}, QUESTIONS[0]])
    out = json.loads(run_rollout_job(rollout_cfg(tmp_path, tiny_dir, data)).read_text())
    assert "exceeds the model's context" in out[0]["error"] and "full_output" in out[1]


@pytest.mark.parametrize("content, message", [
    (None, "file not found"), ("", "file is empty"), ("[1, 2", "malformed JSON"), ("[]", "dataset is empty"),
])
def test_bad_dataset_files(tmp_path, tiny_dir, content, message):
    data = tmp_path / "bad.json"
    if content is not None:
        data.write_text(content)
    with pytest.raises(DataError, match=message):
        run_rollout_job(rollout_cfg(tmp_path, tiny_dir, data))


def test_bad_config_values(tmp_path, tiny_dir):
    data = write(tmp_path / "toy.json", QUESTIONS)
    with pytest.raises(ConfigError, match="did you mean 'rollout.temperature'"):
        rollout_cfg(tmp_path, tiny_dir, data, "rollout.temprature=0.5")
    with pytest.raises(ConfigError, match="remasking_strategy"):
        run_rollout_job(rollout_cfg(tmp_path, tiny_dir, data, "rollout.remasking_strategy=default"))
    with pytest.raises(FileNotFoundError, match="no such directory"):
        run_rollout_job(rollout_cfg(tmp_path, tmp_path / "nope", data))


def test_block_size_mismatch_warns(tmp_path, tiny_dir):
    data = write(tmp_path / "toy.json", QUESTIONS[:1])
    with pytest.warns(UserWarning, match="block_size=8 differs"):
        run_rollout_job(rollout_cfg(tmp_path, tiny_dir, data, "rollout.block_size=8"))


@pytest.mark.slow
def test_seed_command_from_sample_dir(tmp_path):
    """The README's Stage-1 command shape, run from sample/ on the embedded default."""
    data = write(tmp_path / "toy.json", QUESTIONS[:3])
    cmd = [sys.executable, "sdar_sample.py", "config=../configs/sdar_sample.yaml", f"evaluation.eval_dataset={data}",
           "evaluation.data_type=math", "rollout.block_size=4", "rollout.denoising_steps_per_block=4",
           "rollout.max_token=12", "rollout.temperature=0.1", "rollout.top_p=1.0", "rollout.top_k=0",
           "rollout.remasking_strategy=low_confidence_static", f"experiment.output_dir={tmp_path}"]
    res = subprocess.run(cmd, cwd=REPO_ROOT / "sample", capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = Path(res.stdout.strip().splitlines()[-1].removeprefix("wrote "))
    assert out.is_file() and len(json.loads(out.read_text())) == 3
    bad = subprocess.run(cmd + ["rollout.top_kk=1"], cwd=REPO_ROOT / "sample", capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "sdar_sample.py: error: unknown config key 'rollout.top_kk' (not in ../configs/sdar_sample.yaml); "
        "did you mean 'rollout.top_k'?")


@pytest.mark.slow
def test_two_process_accelerate_rollout_equals_one_process(tmp_path):
    data = write(tmp_path / "toy.json", QUESTIONS)
    common = ["config=configs/sdar_sample.yaml", f"evaluation.eval_dataset={data}", "rollout.max_token=12",
              "rollout.temperature=0.7", "rollout.num_response_per_task=2"]
    outs = []
    for name, launcher in (("one", [sys.executable]),
                           ("two", [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                                    "accelerate_configs/cpu_2_processes_ddp.yaml"])):
        res = subprocess.run([*launcher, "sample/sdar_sample.py", *common, f"experiment.output_dir={tmp_path / name}"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        summary = json.loads(res.stdout.strip().splitlines()[-2])
        assert summary["processes"] == (1 if name == "one" else 2)
        outs.append(Path(res.stdout.strip().splitlines()[-1].removeprefix("wrote ")).read_text())
    assert outs[0] == outs[1]


def test_each_prompt_is_encoded_once(tmp_path, tiny_dir, monkeypatch):
    """The preflight (before any output exists) and the decode share one encoding of the prompts."""
    import t3d.decode.rollout as ro

    calls = []
    real = ro.encode_prompt
    monkeypatch.setattr(ro, "encode_prompt", lambda tok, text: calls.append(text) or real(tok, text))
    data = write(tmp_path / "toy.json", QUESTIONS)
    items = json.loads(run_rollout_job(rollout_cfg(tmp_path, tiny_dir, data)).read_text())
    assert len(calls) == len(QUESTIONS) == len(set(calls))
    assert [it["prompt"] for it in items] == calls

"""Bad input to data/rename_key.py and train/self_ddo_sdar_full.py: a non-zero exit, exactly one line on
stderr naming the key, file or record, no traceback, and no output file created or changed.

The trainer runs in-process through t3d.common.cli.run_main (the path `python train/...` takes), which
keeps this file fast; one small real run (module fixture) provides the resume states."""
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.test_train_data import fabricate_records

REPO = Path(__file__).resolve().parents[1]
RUN = "ddo_sdar_full_self"


from t3d.train import records as rename_key  # noqa: E402  (data/rename_key.py's code)


def snapshot(*dirs):
    """{path: sha256} of every file under dirs (missing dirs count as empty)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in dirs for p in sorted(Path(d).rglob("*")) if p.is_file()}


def one_error_line(err, *names):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and ": error: " in lines[0]
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture
def isolated(monkeypatch):
    """An in-process trainer run leaves env vars, accelerate's singleton state and torch threads behind."""
    import torch
    from accelerate.state import AcceleratorState

    env, threads = dict(os.environ), torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", ["self_ddo_sdar_full.py"])
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    os.environ.clear()
    os.environ.update(env)
    torch.set_num_threads(threads)


def exit_code(main, argv):
    """A trainer's main(argv) in-process; returns the exit code (0 when main returns)."""
    try:
        main(argv)
    except SystemExit as stop:
        return stop.code
    return 0


def train(argv):
    from t3d.train.self_ddo import main

    return exit_code(main, argv)


def t3d_argv(data, out, model, *extra):
    return ["config=configs/ddo_sdar_full_self.yaml", f"dataset.optimization_data={data}", f"experiment.output_dir={out}",
            f"model.pretrained_model={model}", "training.batch_size_lm=4", "training.gradient_accumulation_steps=1",
            "training.num_train_epochs=1", "experiment.save_every_steps=1", "training.num_threads=1", *extra]


@pytest.fixture(scope="module")
def records(tiny):
    return fabricate_records(tiny[1], 8)


@pytest.fixture(scope="module")
def finished_run(tiny_dir, records, tmp_path_factory):
    """One real 2-step run (states step-1 and step-2) to copy from."""
    import torch
    from accelerate.state import AcceleratorState

    base = tmp_path_factory.mktemp("finished")
    data = base / "r.json"
    data.write_text(json.dumps(records))
    env, threads = dict(os.environ), torch.get_num_threads()
    try:
        assert train(t3d_argv(data, base / "exp", tiny_dir)) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        os.environ.clear()
        os.environ.update(env)
        torch.set_num_threads(threads)
    assert sorted(p.name for p in (base / "exp" / RUN / "state").iterdir()) == ["step-1", "step-2"]
    return base


@pytest.fixture
def run_copy(finished_run, tmp_path):
    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path / "run", tmp_path / "run" / "r.json", tmp_path / "run" / "exp"


# ---------------------------------------------------------------------------------------------- rename_key
ITEM = {"question": "Q", "prompt": "P", "full_output": ["ab"], "response_ids": [[5, 6]], "step_map": [[1, 2]],
        "block_size": 4, "denoising_steps_per_block": 4, "remasking_strategy": "low_confidence_static"}


@pytest.mark.parametrize("item_edit, raw, strict, names", [
    (None, b'[{"question": "caf\xe9"}]', False, ["r.json", "not UTF-8 text"]),
    (None, b'[{"question": "Q"', False, ["r.json", "malformed JSON/JSONL at line 1"]),
    ({"step_map": [[0, 1]]}, None, True, ["r.json", "item 0 replica 0", "step_map value < 1"]),
    # 2 tokens span at most ceil((2 + 3) / 4) = 2 blocks of 4 steps: 9 is impossible
    ({"step_map": [[1, 9]]}, None, True, ["r.json", "item 0 replica 0", "step_map value > the steps its blocks allow"]),
    ({"block_size": "4"}, None, True, ["r.json", "item 0 replica 0", "block_size not a positive integer"]),
    ({"step_map": [[-3, 1]]}, None, False, ["r.json", "no valid training records", "step_map value < 1: 1"]),
])
def test_rename_key_bad_input(tmp_path, capsys, item_edit, raw, strict, names):
    src, out = tmp_path / "r.json", tmp_path / "out" / "records.json"
    src.write_bytes(raw if raw is not None else json.dumps([{**ITEM, **item_edit}]).encode())
    before = snapshot(tmp_path)
    assert rename_key.main(["--input", str(src), "--output", str(out), *(["--strict"] if strict else [])]) == 1
    one_error_line(capsys.readouterr().err, *names)
    assert snapshot(tmp_path) == before and not out.parent.exists()


def test_rename_key_output_under_a_file(tmp_path, capsys):
    src, blocker = tmp_path / "r.json", tmp_path / "blocker"
    src.write_text(json.dumps([ITEM]))
    blocker.write_text("a file")
    before = snapshot(tmp_path)
    assert rename_key.main(["--input", str(src), "--output", str(blocker / "out.json")]) == 1
    one_error_line(capsys.readouterr().err, blocker / "out.json", "cannot write")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------- trainer: input
def _bad_record(edit):
    def apply(recs):
        edit(recs[1])
        return recs
    return apply


@pytest.mark.parametrize("records_edit, extra, names", [
    (None, ["training.batch_size_lm=0"], ["training.batch_size_lm must be >= 1, got 0"]),
    (None, ["training.gradient_accumulation_steps=0"], ["training.gradient_accumulation_steps must be >= 1"]),
    (None, ["training.num_train_epochs=0"], ["training.num_train_epochs must be >= 1"]),
    (None, ["optimizer.params.learning_rate=-1e-4"], ["optimizer.params.learning_rate must be a number in (0, inf)"]),
    (None, ["lr_scheduler.params.min_lr_scale=2.0"], ["lr_scheduler.params.min_lr_scale must be a number in [0, 1]"]),
    (None, ["training.lambda_ddo=-0.5"], ["training.lambda_ddo must be >= 0, got -0.5"]),
    (None, ["training.lambda_path=-1"], ["training.lambda_path must be >= 0, got -1"]),
    (None, ["experiment.start_from_scratch=true", "training.resume_from_checkpoint=latest"],
     ["experiment.start_from_scratch=true contradicts training.resume_from_checkpoint=latest"]),
    (_bad_record(lambda r: r.update(block_size=8)), [],
     ["r.json: record 1: the rollout's block_size is 8 but training.block_size=4"]),
    (_bad_record(lambda r: r["step_map"].__setitem__(2, 0)), [],
     ["r.json: record 1: step_map has the value 0; decoding steps start at 1"]),
    (_bad_record(lambda r: r["step_map"].__setitem__(0, 99)), [], ["r.json: record 1: step_map has the value 99"]),
    (lambda recs: [{**r, "step_map": [0] * len(r["step_map"])} for r in recs], ["training.skip_invalid_records=true"],
     ["r.json: no usable records"]),
])
def test_trainer_bad_config_or_records(tiny_dir, records, tmp_path, capsys, isolated, records_edit, extra, names):
    data = tmp_path / "r.json"
    data.write_text(json.dumps(records_edit(json.loads(json.dumps(records))) if records_edit else records))
    before = snapshot(tmp_path)
    assert train(t3d_argv(data, tmp_path / "exp", tiny_dir, *extra)) == 2
    one_error_line(capsys.readouterr().err, "self_ddo_sdar_full.py: error:", *names)
    assert snapshot(tmp_path) == before and not (tmp_path / "exp").exists()


def test_trainer_non_utf8_and_missing_data(tiny_dir, tmp_path, capsys, isolated):
    data = tmp_path / "r.json"
    data.write_bytes(b'[{"prompt": "caf\xe9"}]')
    assert train(t3d_argv(data, tmp_path / "exp", tiny_dir)) == 2
    one_error_line(capsys.readouterr().err, data, "not UTF-8 text")
    assert train(t3d_argv(tmp_path / "none", tmp_path / "exp", tiny_dir)) == 2
    one_error_line(capsys.readouterr().err, "training data not found", "dataset.optimization_data='")
    assert not (tmp_path / "exp").exists()


def test_trainer_output_dir_under_a_file_or_read_only(tiny_dir, records, tmp_path, capsys, isolated, monkeypatch):
    data, blocker = tmp_path / "r.json", tmp_path / "blocker"
    data.write_text(json.dumps(records))
    blocker.write_text("a file")
    before = snapshot(tmp_path)
    assert train(t3d_argv(data, blocker / "exp", tiny_dir)) == 2
    one_error_line(capsys.readouterr().err, "experiment.output_dir", f"{blocker} is a file")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access  # root ignores permission bits, so the read-only dir is simulated for the check
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == read_only else real_access(p, mode))
    assert train(t3d_argv(data, read_only / "exp", tiny_dir)) == 2
    one_error_line(capsys.readouterr().err, "experiment.output_dir", f"{read_only} is not writable")
    assert snapshot(tmp_path) == before and list(read_only.iterdir()) == []


# ---------------------------------------------------------------------------------------------- trainer: resume
def test_resume_from_a_model_dir_or_nowhere(run_copy, tiny_dir, capsys, isolated):
    base, data, out = run_copy
    before = snapshot(base)
    model = out / RUN / "ckpt" / "optimized"
    assert train(t3d_argv(data, out, tiny_dir, f"training.resume_from_checkpoint={model}")) == 2
    line = one_error_line(capsys.readouterr().err, "is a saved model, not a training state")
    assert f"model.pretrained_model={model}" in line
    assert train(t3d_argv(data, out, tiny_dir, f"training.resume_from_checkpoint={base}/nope")) == 2
    one_error_line(capsys.readouterr().err, "training.resume_from_checkpoint: no such state directory")
    assert snapshot(base) == before


@pytest.mark.parametrize("change, names", [
    ("seed", ["it belongs to a different run (training.seed 10086 -> 5)"]),
    ("data", ["it belongs to a different run (the training data's content (dataset.optimization_data))"]),
    ("weights", ["it belongs to a different run (the initial weights or tokenizer (model.pretrained_model))"]),
])
def test_incompatible_state_is_refused_and_left_alone(run_copy, tiny_dir, capsys, isolated, change, names):
    base, data, out = run_copy
    extra, model = [], tiny_dir
    if change == "seed":
        extra = ["training.seed=5"]
    elif change == "data":
        recs = json.loads(data.read_text())
        data = base / "other.json"
        data.write_text(json.dumps(recs[::-1]))  # same records, other order: other content
    else:
        model = base / "other-model"
        shutil.copytree(tiny_dir, model)
        (model / "tokenizer_config.json").write_text((model / "tokenizer_config.json").read_text() + " ")
    before = snapshot(base)
    assert train(t3d_argv(data, out, model, *extra)) == 2
    line = one_error_line(capsys.readouterr().err, f"cannot resume from {out / RUN / 'state' / 'step-2'}", *names)
    assert line.endswith("set experiment.start_from_scratch=true to start fresh (the earlier run is moved to "
                         f"{out / RUN / 'previous'}/) or use another experiment.project")
    assert snapshot(base) == before


def test_damaged_only_state_is_named(run_copy, tiny_dir, capsys, isolated):
    base, data, out = run_copy
    state = out / RUN / "state"
    shutil.rmtree(state / "step-1")
    optimizer = state / "step-2" / "optimizer.bin"
    blob = bytearray(optimizer.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte: same size, other checksum
    optimizer.write_bytes(bytes(blob))
    before = snapshot(base)
    assert train(t3d_argv(data, out, tiny_dir)) == 2
    captured = capsys.readouterr()
    one_error_line(captured.err, f"no usable resume state in {state}: {optimizer} is corrupt (checksum mismatch)",
                   "experiment.start_from_scratch=true")
    assert f"WARNING: resume state {state / 'step-2'} is unusable" in captured.out
    assert snapshot(base) == before


def test_corrupt_metrics_line_is_named(run_copy, tiny_dir, capsys, isolated):
    base, data, out = run_copy
    metrics = out / RUN / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(["{not json", *lines[1:]]) + "\n")
    before = snapshot(base)
    assert train(t3d_argv(data, out, tiny_dir, f"training.resume_from_checkpoint={out / RUN / 'state' / 'step-1'}")) == 2
    one_error_line(capsys.readouterr().err, f"{metrics}: line 1 is not a metrics record")
    assert snapshot(base) == before


@pytest.mark.slow
def test_full_disk_while_checkpointing_leaves_no_state(tiny_dir, records, tmp_path):
    """A file-size limit makes the first checkpoint write fail the way a full disk does."""
    import resource
    import subprocess

    data = tmp_path / "r.json"
    data.write_text(json.dumps(records))
    limit = 200_000  # bytes: config and metrics fit, the model file does not

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled"}
    out = subprocess.run([sys.executable, "train/self_ddo_sdar_full.py", *t3d_argv(data, tmp_path / "exp", tiny_dir)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300, preexec_fn=cap)
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr and err.startswith("self_ddo_sdar_full.py: error: could not write ")
    assert "earlier checkpoints and states are intact" in err
    run = tmp_path / "exp" / RUN
    assert [p.name for p in (run / "ckpt").iterdir()] == [] and not (run / "state").exists()

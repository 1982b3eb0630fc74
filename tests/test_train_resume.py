"""Resume decisions of the trainer (in-process, on one small finished run): a damaged newest state falls back
to the previous one and still ends bit-identical; a fresh start moves the earlier run aside, deleting nothing;
the run fingerprint ignores keys that cannot change a trained number. The kill -9 rerun is in test_train_run."""
import json

from safetensors.torch import load_file

from tests.test_bad_inputs_train import (  # noqa: F401  (fixtures)
    RUN, finished_run, isolated, records, run_copy, snapshot, t3d_argv, train,
)
from t3d.train import checkpoints as ck
from t3d.common.config import load_config


def final_weights(out):
    return load_file(str(out / RUN / "ckpt" / "optimized" / "model.safetensors"))


def test_damaged_newest_state_falls_back_and_ends_identical(run_copy, finished_run, tiny_dir, capsys, isolated):
    base, data, out = run_copy
    state = out / RUN / "state"
    with open(state / "step-2" / "optimizer.bin", "r+b") as f:  # cut short, as a damaged disk might
        f.truncate(100)
    assert train(t3d_argv(data, out, tiny_dir)) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "Removed shared tensor" not in captured.out + captured.err  # the tied lm_head note is silenced
    assert f"WARNING: resume state {state / 'step-2'} is unusable: {state / 'step-2' / 'optimizer.bin'} is corrupt " \
           f"(100 bytes, " in "\n".join(lines)
    assert f"resuming from {state / 'step-1'}: step 1, epoch 1 of 1 " \
           "(experiment.start_from_scratch=true starts over instead)" in lines
    assert ck.state_problem(state / "step-2") is None  # rewritten by the resumed run
    reference, resumed = final_weights(finished_run / "exp"), final_weights(out)
    assert all((reference[k] == resumed[k]).all() for k in reference)
    from t3d.model.checkpoint import load

    model, _, _ = load(str(out / RUN / "ckpt" / "optimized"))  # saved without lm_head: tied again on load
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    rows = [json.loads(line) for line in (out / RUN / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]


def test_fresh_start_moves_the_earlier_run_aside(run_copy, tiny_dir, capsys, isolated):
    base, data, out = run_copy
    earlier = snapshot(out / RUN)
    assert train(t3d_argv(data, out, tiny_dir, "experiment.start_from_scratch=true", "training.seed=3")) == 0
    (previous,) = (out / RUN / "previous").iterdir()
    assert f"fresh start: moved the earlier run's state, ckpt, metrics.jsonl, config.yaml from {out / RUN} to " \
           f"{previous} (nothing deleted" in capsys.readouterr().out
    moved = snapshot(previous)
    assert {k.replace(str(previous), str(out / RUN)): v for k, v in moved.items()} == earlier  # byte for byte
    assert sorted(p.name for p in (out / RUN / "state").iterdir()) == ["step-1", "step-2"]
    # the new run is the seed-3 run: the default now resumes it, not the moved one
    assert json.loads((out / RUN / "state" / "step-2" / ck.MANIFEST).read_text())["fingerprint"]["config"][
        "training.seed"] == 3


def test_fingerprint_ignores_paths_logging_and_cadence(tmp_path):
    data, model = tmp_path / "d.json", tmp_path / "m"
    data.write_text("[]")
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"w")
    (model / "README.md").write_bytes(b"docs are not the model")

    def fp(*overrides):
        return ck.run_fingerprint(load_config(["config=configs/ddo_sdar_full_self.yaml", *overrides]), data, model, 1)

    same = fp("experiment.output_dir=/else", "experiment.project=p", "experiment.save_every_steps=3",
              "wandb.mode=offline", "training.resume_from_checkpoint=latest", "model.pretrained_model=x",
              "experiment.checkpoints_total_limit=5", "training.gradient_checkpointing_enable=true")
    assert ck.fingerprint_changes(fp(), same) == []
    assert ck.fingerprint_changes(fp(), fp("training.lambda_path=0.3")) == ["training.lambda_path 0.2 -> 0.3"]
    (model / "README.md").write_bytes(b"edited docs")
    assert ck.fingerprint_changes(fp(), same) == []
    (model / "model.safetensors").write_bytes(b"other weights")
    assert ck.fingerprint_changes(same, fp()) == ["the initial weights or tokenizer (model.pretrained_model)"]


def test_torn_last_metrics_line_is_dropped_with_a_note(run_copy, tiny_dir, capsys, isolated):
    base, data, out = run_copy
    metrics = out / RUN / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 3, "lo')  # a kill during the append
    state = out / RUN / "state" / "step-1"
    assert train(t3d_argv(data, out, tiny_dir, f"training.resume_from_checkpoint={state}")) == 0
    assert f"note: {metrics}: dropped a torn last line (line 3, a crash during the write)" in capsys.readouterr().out
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2]


def test_state_problems_name_the_file(tmp_path):
    state = tmp_path / "step-1"
    state.mkdir()
    (state / "a.bin").write_bytes(b"abc")
    assert ck.state_problem(state) == (f"{state / ck.MANIFEST} is missing (an unfinished state, or one saved by an "
                                       "older version)")
    ck.write_manifest(state, {"config": {}}, 1)
    assert ck.state_problem(state) is None
    (state / "a.bin").write_bytes(b"abd")
    assert ck.state_problem(state) == f"{state / 'a.bin'} is corrupt (checksum mismatch)"
    (state / "a.bin").unlink()
    assert ck.state_problem(state) == f"{state / 'a.bin'} is missing"
    (state / ck.MANIFEST).write_text('{"files": {}}')  # no fingerprint
    assert ck.state_problem(state) == f"{state / ck.MANIFEST} is corrupt"

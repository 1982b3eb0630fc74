"""Results never collide and are never silently replaced; every output is locked while a run writes it.

Rollout files keep their name; a finished one is reused by an unchanged rerun, refused for other inputs and moved
aside by evaluation.restart=true. Eval results are keyed by checkpoint label + weights id, dataset + data id and
settings; sweeps by their members. The CLIs run in-process through run_main (exit 2, one line, no traceback)."""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from t3d.common.cli import run_main
from t3d.common.io import OutputLock, OutputLocked
from t3d.common.paths import CHECKOUT as REPO_ROOT
from t3d.decode.rollout import run_rollout_job
from t3d.eval.evaluate import run_eval_job

ITEMS = [{"question": f"What is {a}+{b}?", "ground_truth_answer": str(a + b)} for a, b in [(1, 2), (3, 4)]]
JOBS = {"sdar_sample.py": (run_rollout_job, REPO_ROOT / "configs" / "sdar_sample.yaml"),
        "eval.py": (run_eval_job, REPO_ROOT / "configs" / "eval.yaml")}


@pytest.fixture
def env(tmp_path, tiny_dir):
    data = tmp_path / "toy.json"
    data.write_text(json.dumps(ITEMS))
    return tmp_path, tiny_dir, data


@pytest.fixture(scope="module")
def other_optimized(tmp_path_factory):
    """A checkpoint named `optimized` (as every trainer's final one) with other weights than the tiny fixture's."""
    from t3d.model.tiny import build

    out = tmp_path_factory.mktemp("run_b") / "ckpt" / "optimized"
    build(out, seed=1, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, head_dim=16)
    return out


def run(script, tmp, ckpt, data, monkeypatch, capsys, *overrides):
    """(exit code, stdout, stderr) of the CLI on a private output dir."""
    job, config = JOBS[script]
    argv = [f"config={config}", f"evaluation.checkpoint_path={ckpt}", f"evaluation.eval_dataset={data}",
            f"experiment.output_dir={tmp}/out", "rollout.max_token=8", *overrides]
    monkeypatch.setattr(sys, "argv", [script, *argv])
    monkeypatch.delenv("T3D_DEBUG", raising=False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    capsys.readouterr()
    try:
        run_main(job, argv, config)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code, stdout, stderr, script):
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"{script}: error: ")
    return lines[0]


def snapshot(root):
    """Every path with its content hash and mtime (folders: present; their mtime moves with a lock file)."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            if p.is_file() else None for p in sorted(root.rglob("*"))}


def test_rollout_unchanged_rerun_is_a_noop_other_inputs_refused_restart_moves_aside(env, other_optimized, monkeypatch,
                                                                                   capsys):
    tmp, ckpt, data = env
    optimized = tmp / "run_a" / "ckpt" / "optimized"
    shutil.copytree(ckpt, optimized)
    assert run("sdar_sample.py", tmp, optimized, data, monkeypatch, capsys)[0] == 0
    out = tmp / "out" / "sdar_sample" / "temp_data" / "outputs-eval-optimized-toy.json"  # the original's name
    first = out.read_bytes()
    before = snapshot(tmp / "out")

    code, stdout, _ = run("sdar_sample.py", tmp, optimized, data, monkeypatch, capsys, "rollout.batch_size=1")
    assert code == 0 and stdout.strip() == (f"{out} is finished with the same inputs: nothing to do "
                                            "(evaluation.restart=true decodes it again)")
    assert snapshot(tmp / "out") == before  # batching changes no output: nothing written

    hint = "pass evaluation.restart=true to move it aside and decode again"
    line = one_line_error(*run("sdar_sample.py", tmp, optimized, data, monkeypatch, capsys, "rollout.temperature=0.5"),
                          "sdar_sample.py")
    assert line.endswith(f"{out} holds a finished rollout decoded with rollout.temperature=0.1 (now 0.5); {hint}")
    line = one_line_error(*run("sdar_sample.py", tmp, other_optimized, data, monkeypatch, capsys), "sdar_sample.py")
    assert line.endswith(f"{out} holds a finished rollout decoded with other weights (than those in "
                         f"{other_optimized}); {hint}")  # another `optimized`: same file name, refused
    assert snapshot(tmp / "out") == before

    code, _, stderr = run("sdar_sample.py", tmp, other_optimized, data, monkeypatch, capsys, "evaluation.restart=true")
    assert code == 0 and "moved the finished outputs-eval-optimized-toy.json to" in stderr
    (previous,) = out.parent.glob(out.name + ".previous-*")
    assert previous.read_bytes() == first and out.read_bytes() != first
    assert {p.name.split(".previous-")[0] for p in out.parent.glob("*.previous-*")} == {
        out.name, out.name + ".inputs", "outputs-eval-optimized-toy.config.yaml"}  # with its fingerprint and config
    assert not list(out.parent.glob("*.lock")) and not list(out.parent.glob("*.partial*"))


def test_two_checkpoints_named_optimized_evaluate_into_different_folders(env, other_optimized, monkeypatch, capsys):
    tmp, ckpt, data = env
    optimized = tmp / "run_a" / "ckpt" / "optimized"
    shutil.copytree(ckpt, optimized)
    rows = []
    for path in (optimized, other_optimized):
        code, _, _ = run("eval.py", tmp, path, data, monkeypatch, capsys)
        assert code == 0
        (metrics,) = [p for p in (tmp / "out" / "eval" / "results").rglob("metrics.json")
                      if json.loads(p.read_text())["checkpoint_path"] == str(path)]
        rows.append(json.loads(metrics.read_text()))
    dirs = [os.path.relpath(r["run_dir"], tmp / "out" / "eval" / "results") for r in rows]
    assert dirs[0] != dirs[1] and all(d.startswith("optimized-") for d in dirs)
    assert dirs[0].split("/")[1:] == dirs[1].split("/")[1:]  # same dataset id and settings, other weights id
    assert dirs[0].split("/")[0] == f"optimized-{rows[0]['inputs']['weights'][:8]}"
    before = snapshot(tmp / "out")
    code, _, stderr = run("eval.py", tmp, optimized, data, monkeypatch, capsys)  # unchanged: reused, nothing written
    assert code == 0 and f"unchanged, finished in {rows[0]['run_dir']}" in stderr and snapshot(tmp / "out") == before
    # the same items read from another file (another path, same content): the same result
    copy = tmp / "elsewhere" / "toy.json"
    copy.parent.mkdir()
    shutil.copy(data, copy)
    code, _, stderr = run("eval.py", tmp, optimized, copy, monkeypatch, capsys)
    assert code == 0 and "unchanged" in stderr and snapshot(tmp / "out") == before
    # other items in a file of the same name: another folder
    copy.write_text(json.dumps(ITEMS[:1]))
    assert run("eval.py", tmp, optimized, copy, monkeypatch, capsys)[0] == 0
    assert len(list((tmp / "out" / "eval" / "results").glob("optimized-*/toy-*"))) == 3


def test_sweeps_are_keyed_by_their_members_and_an_unchanged_one_is_kept(env, monkeypatch, capsys):
    tmp, ckpt, data = env
    results = tmp / "out" / "eval" / "results"
    for steps in ("[4,1]", "[2,1]"):
        assert run("eval.py", tmp, ckpt, data, monkeypatch, capsys, f"sweep.denoising_steps={steps}")[0] == 0
    sweeps = sorted(results.glob("sweep-toy-*"))
    assert len(sweeps) == 2
    assert sorted(len(json.loads((s / "sweep.json").read_text())["rows"]) for s in sweeps) == [2, 2]
    before = {p: p.read_bytes() for s in sweeps for p in s.iterdir()}
    code, _, stderr = run("eval.py", tmp, ckpt, data, monkeypatch, capsys, "sweep.denoising_steps=[4,1]")
    assert code == 0 and "unchanged" in stderr
    assert {p: p.read_bytes() for s in sweeps for p in s.iterdir()} == before
    # a member evaluated again (restart): its old result and the old summary are moved aside, not replaced
    code, _, stderr = run("eval.py", tmp, ckpt, data, monkeypatch, capsys, "sweep.denoising_steps=[4,1]",
                          "evaluation.restart=true")
    assert code == 0 and "moved the earlier summary" in stderr
    assert len(list(results.glob("sweep-toy-*.previous-*"))) == 1
    assert len(list(results.glob("*/toy-*/B4-S4-*.previous-*"))) == 1


@pytest.mark.parametrize("script", list(JOBS))
def test_a_second_run_on_a_locked_output_is_refused_at_once(env, monkeypatch, capsys, script):
    tmp, ckpt, data = env
    assert run(script, tmp, ckpt, data, monkeypatch, capsys)[0] == 0
    if script == "eval.py":
        (metrics,) = (tmp / "out").rglob("metrics.json")
        target = metrics.parent
    else:
        (target,) = (tmp / "out").rglob("outputs-*.json")
    before = snapshot(tmp / "out")
    with OutputLock(target):  # another run writing there (this process: alive, on this host)
        after_lock = snapshot(tmp / "out")
        line = one_line_error(*run(script, tmp, ckpt, data, monkeypatch, capsys), script)
        assert snapshot(tmp / "out") == after_lock
    assert line.endswith(f"{target} is in use by another run (pid {os.getpid()} on host {socket.gethostname()}, "
                         f"since {line.split(', since ')[1].split(')')[0]}); wait for it to end, or remove "
                         f"{target}.lock if that run is gone")
    assert snapshot(tmp / "out") == before  # the lock is gone with its holder


def test_a_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    target = tmp_path / "outputs-eval-m-d.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / "outputs-eval-m-d.json.lock"
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "20240101T000000Z"}))
    with OutputLock(target):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(OutputLocked, match=f"in use by another run \\(pid {os.getpid()} "):
            OutputLock(target).acquire()
    assert not lock.exists() and f"removed the stale lock {lock}" in capsys.readouterr().err
    # a lock of another host is never taken over: its pid says nothing here
    lock.write_text(json.dumps({"pid": dead.pid, "host": "elsewhere", "since": "20240101T000000Z"}))
    with pytest.raises(OutputLocked, match=f"pid {dead.pid} on host elsewhere"):
        OutputLock(target).acquire()
    assert lock.exists()

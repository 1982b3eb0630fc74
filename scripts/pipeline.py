"""The T3D pipeline as subprocess calls of the documented command-line tools.

Shared by `scripts/quickstart.py`, `scripts/run_experiment.py` and the tests: every stage is the
command a user would type (`sample/sdar_sample.py` from `sample/`, `data/rename_key.py`,
`train/self_ddo_sdar_full.py`, `train/sft_sdar.py`, `eval.py`), so these scripts exercise the real CLIs.
Each command's output goes to a log file; a failing stage stops the run with the log's tail.
"""
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PY = sys.executable
ENV = {"DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}


class StageError(RuntimeError):
    """A stage's command failed; the message names the command and ends with its log's tail."""


def run_stages(exp, requested, all_stages, prog, on_stage_done=None):
    """Run exp.stage_<name>() for the requested stages in pipeline order, timing each; exits with one line
    on an unknown stage name. on_stage_done(name, seconds) is called after each."""
    unknown = [s for s in requested if s not in all_stages]
    if unknown:
        sys.exit(f"{prog}: unknown stage(s) {unknown}; choose from {', '.join(all_stages)}")
    started = time.perf_counter()
    for stage in all_stages:
        if stage in requested:
            t = time.perf_counter()
            getattr(exp, f"stage_{stage}")()
            if on_stage_done is not None:
                on_stage_done(stage, time.perf_counter() - t)
            print(f"== {stage}: {time.perf_counter() - t:.0f} s", flush=True)
    print(f"total {(time.perf_counter() - started) / 60:.1f} min")


def shell_line(cmd, cwd=ROOT, portable=False):
    """The command as one copy-pasteable shell line (with `cd` when it runs outside the repo root).

    portable=True: for a script that sets ROOT to the repository root, so it runs on any checkout: the
    interpreter becomes `python` and this checkout's path `${ROOT}`."""
    line = " ".join(_portable_arg(c) for c in cmd) if portable else shlex.join(str(c) for c in cmd)
    if Path(cwd).resolve() != ROOT:
        line = f"(cd {os.path.relpath(cwd, ROOT)} && {line})"
    return line


def _portable_arg(arg):
    """One argument of a portable line; `${ROOT}` goes inside double quotes so it expands within list
    overrides too."""
    arg = str(arg)
    if arg == PY:
        return "python"
    if str(ROOT) not in arg:
        return shlex.quote(arg)
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`").replace("$", "\\$")
    return '"' + escaped.replace(str(ROOT), "${ROOT}") + '"'


class Runner:
    """Runs commands from the repo root (or `cwd`), logging each to `<log_dir>/<NN>-<name>.log` and
    recording its shell line, wall time and exit code (`self.history`, appended to `<log_dir>/history.jsonl`).
    Safe to call from several threads (`parallel`)."""

    def __init__(self, log_dir, verbose=False):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.verbose = verbose
        self.history = []
        self._lock = threading.Lock()
        self._started = 0

    def __call__(self, name, cmd, cwd=ROOT):
        line = shell_line(cmd, cwd)
        with self._lock:
            log = self.log_dir / f"{self._started:02d}-{name}.log"
            self._started += 1
        print(f"[{name}] $ {line}", flush=True)
        env = {**os.environ, **{k: os.environ.get(k, v) for k, v in ENV.items()}}
        started = time.perf_counter()
        with open(log, "w", encoding="utf-8") as f:
            f.write(f"$ {line}\n")
            f.flush()
            if self.verbose:
                proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
                for out in proc.stdout:
                    f.write(out)
                    sys.stdout.write(out)
                code = proc.wait()
            else:
                code = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - started
        entry = {"stage": name, "command": line, "portable": shell_line(cmd, cwd, portable=True), "seconds": round(seconds, 1),
                 "log": str(log), "exit": code}
        with self._lock:
            self.history.append(entry)
            with open(self.log_dir / "history.jsonl", "a", encoding="utf-8") as f:  # survives across invocations
                f.write(json.dumps(entry) + "\n")
        if code != 0:
            tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
            raise StageError(f"stage '{name}' failed (exit {code}); log {log}:\n{tail}")
        print(f"[{name}] done in {seconds:.0f} s (log: {os.path.relpath(log, ROOT)})", flush=True)
        return seconds

    def parallel(self, jobs, workers):
        """Run [(name, cmd) or (name, cmd, cwd)] on `workers` threads (each command is its own process).
        After a failure nothing new starts; it is raised once the running commands have ended."""
        pool = ThreadPoolExecutor(max_workers=max(1, workers))
        futures = [pool.submit(self, *job) for job in jobs]
        try:
            for future in as_completed(futures):
                future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return [f.result() for f in futures]


# ------------------------------------------------------------------------------------------------ commands
def _overrides(values):
    """{'a.b': 1} -> ['a.b=1']; lists as [x,y] (the OmegaConf dotlist form)."""
    out = []
    for key, value in values.items():
        if isinstance(value, (list, tuple)):
            value = "[" + ",".join(str(v) for v in value) + "]"
        elif isinstance(value, bool):
            value = str(value).lower()
        elif value is None:
            value = "null"
        out.append(f"{key}={value}")
    return out


def rollout_command(checkpoint, dataset, output_dir, project="sdar_sample", *, block_size=4, steps=4, max_token=64,
                    temperature=0.1, replicas=1, seed=0, extra=None):
    """Stage 1 exactly as documented: run from sample/ with ../configs/sdar_sample.yaml. Paths absolute."""
    values = {
        "evaluation.checkpoint_path": Path(checkpoint).resolve(), "evaluation.eval_dataset": Path(dataset).resolve(),
        "evaluation.data_type": "math", "rollout.block_size": block_size, "rollout.denoising_steps_per_block": steps,
        "rollout.max_token": max_token, "rollout.temperature": temperature, "rollout.top_p": 1.0, "rollout.top_k": 0,
        "rollout.remasking_strategy": "low_confidence_static", "rollout.num_response_per_task": replicas,
        "rollout.seed": seed, "experiment.output_dir": Path(output_dir).resolve(), "experiment.project": project,
        **(extra or {}),
    }
    return [PY, "sdar_sample.py", "config=../configs/sdar_sample.yaml", *_overrides(values)], ROOT / "sample"


def rollout_output(checkpoint, dataset, output_dir, project="sdar_sample"):
    """Where sdar_sample.py writes (RolloutJob.output_path, the original's file name)."""
    from t3d.common.config import load_config
    from t3d.decode.settings import RolloutJob

    cfg = load_config([f"config={ROOT / 'configs' / 'sdar_sample.yaml'}", *_overrides({
        "evaluation.checkpoint_path": checkpoint, "evaluation.eval_dataset": dataset,
        "experiment.output_dir": Path(output_dir).resolve(), "experiment.project": project})])
    return RolloutJob.from_config(cfg).output_path


def rename_command(rollout_file, output):
    return [PY, "data/rename_key.py", "--input", Path(rollout_file).resolve(), "--output", Path(output).resolve()]


def train_command(script, config, overrides):
    """`python train/<script> config=<config> key=value ...` (one process: the CPU default). These scripts
    always train a fresh run (an earlier run in the same dir is moved to its previous/), as they did before
    resuming became the trainers' default; an override can say otherwise."""
    return [PY, f"train/{script}", f"config={config}", *_overrides({"experiment.start_from_scratch": True, **overrides})]


def eval_command(checkpoints, dataset, output_dir, project, *, steps=(4, 2, 1), temperature=0.0, max_token=64,
                 seed=0, block_size=4, extra=None):
    """eval.py sweep over S and checkpoints {label: path}: one table, sweep.json and sweep.png."""
    values = {
        "evaluation.eval_dataset": Path(dataset).resolve() if Path(dataset).suffix else dataset,
        "evaluation.data_type": "math", "rollout.block_size": block_size, "rollout.temperature": temperature,
        "rollout.max_token": max_token, "rollout.seed": seed, "sweep.denoising_steps": list(steps),
        "sweep.checkpoints": [f"{label}={Path(path).resolve()}" for label, path in checkpoints.items()],
        "experiment.output_dir": Path(output_dir).resolve(), "experiment.project": project, **(extra or {}),
    }
    return [PY, "eval.py", "config=configs/eval.yaml", *_overrides(values)]


def sweep_rows(output_dir, project, dataset):
    """eval.py's sweep.json rows for a dataset (name or path): its newest sweep (results/sweep-<dataset>-<id>/;
    eval.py marks an unchanged sweep newest too)."""
    results = Path(output_dir) / project / "results"
    pattern = re.compile(rf"sweep-{re.escape(Path(str(dataset)).stem)}-[0-9a-f]{{8}}")
    found = [p for p in results.glob("sweep-*/sweep.json") if pattern.fullmatch(p.parent.name)]
    if not found:
        raise FileNotFoundError(f"no sweep of {dataset} under {results}")
    path = max(found, key=lambda p: p.stat().st_mtime_ns)
    return json.loads(path.read_text(encoding="utf-8"))["rows"], path


def subset(src, dest, start, stop):
    """Write items[start:stop] of a dataset file (JSON list) to dest; returns dest."""
    from t3d.common.io import atomic_write_json, read_records

    items = read_records(src)[start:stop]
    atomic_write_json(Path(dest), items)
    return Path(dest)


# ------------------------------------------------------------------------------------------------ reports
def mean_std(values):
    """(mean, sample std) of the non-None values; std 0.0 for one value, (None, None) for none."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def valid_share(row, items):
    """Share of outputs that are exactly one of the item's valid phrasings (items carry `solutions`)."""
    if not all("solutions" in it for it in items):
        return None
    run_dir = Path(row["run_dir"])  # eval.py's result directory of this (checkpoint, setting)
    records = [json.loads(line) for line in (run_dir / "items.jsonl").read_text(encoding="utf-8").splitlines() if line]
    special = re.compile(r"<\|[^|]*\|>")
    ok = [special.sub("", r.get("output") or "").strip() in {s.strip() for s in items[r["index"]]["solutions"]}
          for r in records]
    return sum(ok) / max(len(ok), 1)


def commands_script(history, script="scripts/run_experiment.py"):
    """commands.sh: every command of a run with its wall time, runnable from any checkout (ROOT)."""
    lines = ["#!/usr/bin/env bash", f"# Commands run by {script}, with wall times on 2 CPU cores.",
             "# Run from the repository root with the venv active (. .venv/bin/activate).", "set -euo pipefail",
             'ROOT="${ROOT:-$PWD}"', ""]
    for h in history:
        lines += [f"# {h['stage']}: {h['seconds']:.0f} s", h["portable"], ""]
    return "\n".join(lines)

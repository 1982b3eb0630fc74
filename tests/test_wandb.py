"""The user's W&B: with WANDB_MODE=offline exported and no W&B key set in the config, training writes an offline
run whose metrics are namespaced (train/...); nothing is changed in the environment at import time."""
import os
import subprocess
import sys

import pytest

from t3d.common.paths import CHECKOUT
from tests.tiny_training import train_tiny_t3d


def test_importing_the_commands_changes_no_environment_variable():
    # (torch itself sets KMP_* and TORCHINDUCTOR_* on import: only the variables a toolkit would set are checked)
    code = ("import os; before = dict(os.environ); import t3d.commands, t3d.train.runtime, t3d.decode.rollout, "
            "t3d.eval.evaluate, t3d.integrations.lm_eval; changed = set(os.environ.items()) ^ set(before.items()); "
            "print(sorted(k for k, _ in changed if k.startswith(('WANDB', 'DS_', 'TOKENIZERS', 'T3D'))))")
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "DS_ACCELERATOR", "TOKENIZERS_PARALLELISM")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_training_follows_an_exported_wandb_mode_with_namespaced_metrics(tmp_path):
    run_dir = train_tiny_t3d(tmp_path, WANDB_MODE="offline")
    runs = list(run_dir.rglob("offline-run-*"))
    assert runs, "no offline W&B run was written"
    logged = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
    assert b"train/loss" in logged and b"train/path" in logged


@pytest.mark.slow
def test_eval_follows_an_exported_wandb_mode_with_namespaced_metrics(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_DIR", None)
    out = subprocess.run([sys.executable, "eval.py", "config=configs/eval.yaml", f"experiment.output_dir={tmp_path}",
                          "evaluation.max_items=4", "rollout.max_token=24", "sweep.denoising_steps=[4,1]"],
                         cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = list((tmp_path / "eval").rglob("offline-run-*"))
    assert runs, "no offline W&B run was written"
    logged = b"".join(p.read_bytes() for p in runs[0].rglob("*.wandb"))
    assert b"eval/results" in logged and b"eval/aup" in logged and b"eval/sweep" in logged

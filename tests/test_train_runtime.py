"""Trainer process setup: config checks, run dir, W&B modes (never a login prompt)."""
import os
from pathlib import Path

import pytest

from t3d.train import runtime
from t3d.common.paths import CHECKOUT as REPO_ROOT
from t3d.common.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def _cfg(*overrides):
    return load_config([f"config={REPO / 'configs' / 'ddo_sdar_full_self.yaml'}", *overrides])


def test_shipped_configs_pass_their_checks():
    runtime.check_common(_cfg())
    runtime.check_common(load_config([f"config={REPO / 'configs' / 'sft_sdar.yaml'}"]))


@pytest.mark.parametrize("override, message", [
    ("training.batch_size_lm=0", "training.batch_size_lm must be >= 1, got 0"),
    ("training.mixed_precision=fp8", "training.mixed_precision must be one of no, bf16, fp16, got 'fp8'"),
    ("training.max_grad_norm=2.0", "training.max_grad_norm is an alias: set experiment.max_grad_norm instead"),
    ("dataset.data_type=poetry", "dataset.data_type must be one of math, option, code, got 'poetry'"),
])
def test_common_checks_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        runtime.check_common(_cfg(override))
    assert str(err.value) == message


def test_run_dir_relative_to_repo_root(tmp_path):
    assert runtime.run_dir(_cfg()) == REPO_ROOT / "experiments" / "ddo_sdar_full_self"
    assert runtime.run_dir(_cfg(f"experiment.output_dir={tmp_path}", "experiment.project=x")) == tmp_path / "x"


def test_wandb_modes(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var in ("WANDB_DIR", "WANDB_SILENT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")  # registered, so the mode set below is undone afterwards
    assert runtime._wandb_env(_cfg("wandb.mode=offline"), tmp_path) == "offline"
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_DIR"] == str(tmp_path)
    with pytest.raises(ConfigError, match="wandb.mode=online needs WANDB_API_KEY or `wandb login`"):
        runtime._wandb_env(_cfg("wandb.mode=online"), tmp_path)
    with pytest.raises(ConfigError, match="wandb.mode must be one of disabled, offline, online or null"):
        runtime._wandb_env(_cfg("wandb.mode=cloud"), tmp_path)


def test_wandb_mode_null_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert runtime._wandb_env(_cfg("wandb.mode=null"), tmp_path) == "offline"
    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert runtime.wandb_mode(_cfg("wandb.mode=null")) == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert runtime.wandb_mode(_cfg("wandb.mode=null")) == "disabled"  # never a login prompt


@pytest.mark.parametrize("script, key", [("self_ddo", "training.lambda_path=0.2"),
                                         ("sft", "dataset.source=\"items\"")])
def test_trainer_help_lists_keys_with_comments(script, key, capsys):
    import importlib

    main = importlib.import_module(f"t3d.train.{script}").main
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "config=path.yaml [key=value ...]" in out.splitlines()[0]
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("experiment.start_from_scratch="))
    assert line.split()[0] == "experiment.start_from_scratch=false" and "# false = resume from the newest" in line
    assert any(ln.strip().startswith(key) and "#" in ln for ln in out.splitlines())

"""Checkpoints are written in the training dtype by default (bf16 under mixed_precision=bf16: 2 bytes per
parameter), training.save_dtype chooses fp32 or bf16, and what is written loads through t3d.model.checkpoint."""
import json

import pytest
import torch
from safetensors import safe_open

from t3d.common.config import ConfigError, load_config
from t3d.common.paths import CONFIGS
from t3d.model.checkpoint import load, load_model
from t3d.train.checkpoints import save_model
from t3d.train.runtime import check_common


def cfg_with(*overrides):
    return load_config([f"config={CONFIGS / 't3d_tiny.yaml'}", *overrides])


def saved_dtypes(directory):
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return {f.get_slice(name).get_dtype() for name in f.keys()}


@pytest.mark.parametrize("precision, choice, want, bytes_per", [
    ("bf16", "auto", "BF16", 2), ("no", "auto", "F32", 4), ("bf16", "fp32", "F32", 4), ("no", "bf16", "BF16", 2),
])
def test_saved_weights_dtype_and_size(tiny_dir, tmp_path, precision, choice, want, bytes_per):
    from accelerate import Accelerator

    model, tokenizer, _ = load(str(tiny_dir))
    cfg = cfg_with(f"training.mixed_precision='{precision}'", f"training.save_dtype={choice}")
    save_model(Accelerator(cpu=True), model.train(), tokenizer, cfg, tmp_path / "ckpt")
    assert saved_dtypes(tmp_path / "ckpt") == {want}
    n = sum(p.numel() for p in model.parameters())  # tied: the head is the embedding, saved once
    size = (tmp_path / "ckpt" / "model.safetensors").stat().st_size
    assert n * bytes_per <= size < n * bytes_per + 64 * 1024
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == {"BF16": "bfloat16", "F32": "float32"}[want]
    reloaded = load_model(str(tmp_path / "ckpt"), "bf16" if want == "BF16" else "fp32")
    for (name, p), q in zip(model.named_parameters(), reloaded.parameters()):
        assert torch.equal(p.to(q.dtype), q), name


def test_save_dtype_key_is_checked():
    with pytest.raises(ConfigError, match="training.save_dtype must be one of auto, fp32, bf16, got 'fp16'"):
        check_common(cfg_with("training.save_dtype=fp16"))

"""Checkpoints are standalone Hugging Face models: in a process where `t3d` cannot be imported,
AutoModelForCausalLM/AutoTokenizer with trust_remote_code load the shipped models and a toolkit-trained
checkpoint, and give the toolkit's logits exactly (the same model code, the same weights, float32)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from t3d.common.paths import CHECKOUT
from t3d.model.checkpoint import load
from tests.tiny_training import train_tiny_t3d

IDS = [[5, 17, 42, 3, 3, 3, 3, 9, 11, 2]]
CLEAN_LOAD = """
import json, sys
class NoT3D:  # the package is not installed here
    def find_spec(self, name, path=None, target=None):
        if name == "t3d" or name.startswith("t3d."):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoT3D())
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, ids = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32).eval()
tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
with torch.no_grad():
    logits = model(torch.tensor(ids)).logits
print(json.dumps({"logits": logits.flatten().tolist(), "mask": tokenizer.mask_token_id, "class": type(model).__name__}))
"""


def clean_logits(path, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")
    out = subprocess.run([sys.executable, "-c", CLEAN_LOAD, str(path), json.dumps(IDS)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def toolkit_logits(path):
    model, tokenizer, _ = load(str(path))
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.flatten().tolist(), tokenizer.mask_token_id


@pytest.mark.parametrize("name", ["sdar-tiny", "sdar-chain"])
def test_shipped_models_load_without_the_package(name, tmp_path):
    path = CHECKOUT / "models" / name
    got = clean_logits(path, tmp_path)
    logits, mask = toolkit_logits(path)
    assert got["class"] == "SDARForCausalLM" and got["mask"] == mask
    assert got["logits"] == logits


@pytest.mark.slow
def test_a_trained_checkpoint_loads_without_the_package(tmp_path):
    ckpt = train_tiny_t3d(tmp_path) / "ckpt" / "optimized"
    assert (ckpt / "modeling_sdar.py").is_file() and (ckpt / "configuration_sdar.py").is_file()
    assert oct((ckpt / "model.safetensors").stat().st_mode & 0o044) == oct(0o044 & ~_umask())
    got = clean_logits(ckpt, tmp_path)
    logits, mask = toolkit_logits(ckpt)
    assert got["logits"] == logits and got["mask"] == mask


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask

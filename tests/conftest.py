import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random SDAR checkpoint directory (2 layers), built once per session."""
    from t3d.model.tiny import build

    out = tmp_path_factory.mktemp("tiny-sdar")
    build(out, seed=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, head_dim=16)
    return out


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from t3d.model.checkpoint import load

    model, tokenizer, _ = load(str(tiny_dir))
    return model, tokenizer

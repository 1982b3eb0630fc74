"""Find and load a checkpoint: a local directory (the embedded default included) or a hub id."""
import os
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / "models" / "sdar-tiny"
MASK_TOKEN = "<|MASK|>"

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def resolve_checkpoint(path_or_id):
    """Local path (as given, else relative to the repo root) or a hub repo id fetched with huggingface_hub."""
    if path_or_id is None or str(path_or_id).strip() in ("", "null", "None"):
        return str(DEFAULT_MODEL)
    raw = str(path_or_id)
    for candidate in (Path(raw).expanduser(), REPO_ROOT / raw):
        if candidate.is_dir():
            if not (candidate / "config.json").is_file():
                raise FileNotFoundError(f"checkpoint directory {candidate} has no config.json")
            return str(candidate.resolve())
    if raw.startswith(("/", ".", "~")) or raw.count("/") != 1:
        raise FileNotFoundError(f"checkpoint_path '{raw}': no such directory (and not a hub id like 'JetLM/SDAR-4B-Chat')")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(raw)
    except Exception as err:
        raise FileNotFoundError(
            f"checkpoint_path '{raw}': not a local directory and the hub download failed "
            f"({type(err).__name__}); download it elsewhere and pass the local directory"
        ) from None


def load_tokenizer(path):
    """AutoTokenizer with a guaranteed mask token (some SDAR tokenizers carry <|MASK|> but do not declare it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.mask_token_id is None:
        if MASK_TOKEN not in tokenizer.get_vocab():
            raise ValueError(f"{path}: tokenizer has no mask token and no {MASK_TOKEN} in its vocabulary")
        tokenizer.mask_token = MASK_TOKEN
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def stop_token_ids(tokenizer):
    """Ids that end a response: the tokenizer's EOS plus the chat end-of-turn and end-of-text tokens."""
    vocab = tokenizer.get_vocab()
    ids = {tokenizer.eos_token_id} | {vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab}
    return sorted(i for i in ids if i is not None)


def load_model(path, dtype="fp32", device="cpu"):
    import models  # noqa: F401  (registers SDAR with the Auto classes)
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device).eval()


def load(path_or_id, dtype="fp32", device="cpu"):
    path = resolve_checkpoint(path_or_id)
    return load_model(path, dtype, device), load_tokenizer(path), path


def seed_everything(seed):
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)

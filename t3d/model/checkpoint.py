"""Find, check, fingerprint and load a checkpoint: a local directory (the embedded default included) or a hub id.

A PEFT adapter directory (adapter_config.json + adapter_model.safetensors, as LoRA training saves) counts as a
checkpoint too: its base is its adapter_config.json's base_model_name_or_path (resolved the same way), and
loading it gives base + adapter merged."""
import hashlib
import json
from pathlib import Path

import torch

from t3d.common.errors import DataError, first_line
from t3d.common.paths import HOME, MODELS

DEFAULT_MODEL = MODELS / "sdar-tiny"
MASK_TOKEN = "<|MASK|>"

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


class CheckpointError(DataError):
    """A checkpoint directory that cannot be loaded as an SDAR model; one line naming the file."""


# Files whose content determines a decode: the weights (plus the model config) and the tokenizer.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
WEIGHT_FILES = ("config.json", "generation_config.json", "adapter_config.json")
ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_PREFIXES = ("tokenizer", "special_tokens_map", "added_tokens", "chat_template", "vocab", "merges")
_FULL_HASH_BYTES = 64 << 20  # files up to this size are hashed whole
_SAMPLES, _SAMPLE_BYTES = 64, 64 << 10  # larger ones: header + 64 strided 64 KiB samples + tail


def _file_digest(path, h):
    """Feed a content digest of one file into `h`: the whole file when small; else its size, the
    safetensors header (tensor names, shapes, offsets), strided samples and the tail, so retrained
    weights of the same shapes differ while an 8 GB checkpoint hashes in milliseconds (from page cache)."""
    size = path.stat().st_size
    h.update(f"{path.name}\0{size}\0".encode())
    with open(path, "rb") as f:
        if size <= _FULL_HASH_BYTES:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
            return
        head = f.read(8)
        header_len = int.from_bytes(head, "little") if path.suffix == ".safetensors" else 0
        h.update(head + f.read(min(header_len, 100 << 20)))
        for k in range(_SAMPLES + 1):
            f.seek(min(k * (size // _SAMPLES), size - _SAMPLE_BYTES))
            h.update(f.read(_SAMPLE_BYTES))


def content_fingerprint(path):
    """{"weights": hex, "tokenizer": hex}: content hashes of a checkpoint directory's weight and
    tokenizer files (hub snapshots are directories too), used to refuse resuming across changed inputs.
    An adapter directory's weights cover its adapter files and its base's weights."""
    groups = {"weights": hashlib.sha256(), "tokenizer": hashlib.sha256()}
    if is_adapter(path):
        base = content_fingerprint(adapter_base(path))
        groups["weights"].update(f"base\0{base['weights']}\0".encode())
        if tokenizer_dir(path) != str(path):
            groups["tokenizer"].update(f"base\0{base['tokenizer']}\0".encode())
    for file in sorted(Path(path).iterdir()):
        if not file.is_file() or file.name.startswith("."):
            continue
        if file.suffix in WEIGHT_SUFFIXES or file.name in WEIGHT_FILES or file.name.endswith(".index.json"):
            _file_digest(file, groups["weights"])
        elif file.name.startswith(TOKENIZER_PREFIXES):
            _file_digest(file, groups["tokenizer"])
    return {name: h.hexdigest()[:16] for name, h in groups.items()}


def _json_object(file):
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        where = f" at line {err.lineno} col {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise CheckpointError(f"{file}: not valid JSON{where}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(config).__name__}")
    return config


def is_adapter(path):
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path):
    """The resolved base checkpoint of an adapter directory; a one-line CheckpointError when it is missing."""
    file = Path(path) / ADAPTER_CONFIG
    base = _json_object(file).get("base_model_name_or_path")
    if not base:
        raise CheckpointError(f"{file}: no base_model_name_or_path (the base model this adapter applies to)")
    try:
        return resolve_checkpoint(base)
    except FileNotFoundError as err:
        raise CheckpointError(f"{file}: base model not found: {first_line(err)}") from None


def check_checkpoint(path):
    """Refuse, with one line naming the file, a directory that is not a loadable SDAR checkpoint:
    config.json must be a JSON object with model_type 'sdar' and each safetensors file must be whole.
    An adapter directory: its base must pass, and its adapter must be LoRA and whole; returns the base's config."""
    path = Path(path)
    if is_adapter(path):
        config = check_checkpoint(adapter_base(path))
        peft_type = _json_object(path / ADAPTER_CONFIG).get("peft_type")
        if peft_type != "LORA":
            raise CheckpointError(
                f"{path / ADAPTER_CONFIG}: peft_type {peft_type!r} is not supported (expected 'LORA')")
        if not (path / "adapter_model.safetensors").is_file():
            raise CheckpointError(f"{path / 'adapter_model.safetensors'}: missing (the adapter's weights)")
        _check_safetensors(path / "adapter_model.safetensors")
        return config
    config_file = path / "config.json"
    config = _json_object(config_file)
    if config.get("model_type") != "sdar":
        raise CheckpointError(f"{config_file}: model_type {config.get('model_type')!r} is not an SDAR "
                              "block-diffusion model (expected 'sdar')")
    for file in sorted(path.glob("*.safetensors")):
        _check_safetensors(file)
    return config


def _check_safetensors(file):
    size = file.stat().st_size
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or n > size - 8:
            raise CheckpointError(f"{file}: not a safetensors file (truncated or garbage header)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{file}: not a safetensors file (unreadable header)") from None
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
            and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2] if isinstance(header, dict) else []
    if not ends or max(ends) != size - 8 - n:
        raise CheckpointError(f"{file}: truncated or corrupt safetensors file ({size} bytes; the header "
                              f"describes {8 + n + max(ends, default=0)})")


def resolve_checkpoint(path_or_id):
    """Local path (as given, else relative to the toolkit's home (the checkout)) or a hub repo id fetched with huggingface_hub."""
    if path_or_id is None or str(path_or_id).strip() in ("", "null", "None"):
        return str(DEFAULT_MODEL)
    raw = str(path_or_id)
    for candidate in (Path(raw).expanduser(), HOME / raw):
        if candidate.is_dir():
            if not (candidate / "config.json").is_file() and not is_adapter(candidate):
                raise FileNotFoundError(f"checkpoint directory {candidate} has no config.json (nor {ADAPTER_CONFIG})")
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


def tokenizer_dir(path):
    """Where a checkpoint's tokenizer is: the directory itself, or an adapter directory's base when it has none."""
    if is_adapter(path) and not any(Path(path).glob("tokenizer*")):
        return tokenizer_dir(adapter_base(path))
    return str(path)


def load_tokenizer(path):
    """AutoTokenizer with a guaranteed mask token (some SDAR tokenizers carry <|MASK|> but do not declare it); an
    adapter directory without tokenizer files uses its base's."""
    from transformers import AutoTokenizer

    path = tokenizer_dir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{path}: cannot load the tokenizer ({first_line(err)})") from None
    if tokenizer.mask_token_id is None:
        if MASK_TOKEN not in tokenizer.get_vocab():
            raise CheckpointError(f"{path}: tokenizer has no mask token and no {MASK_TOKEN} in its vocabulary")
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
    """An SDAR model from a checkpoint directory (an adapter directory: its base with the adapter merged in, a
    plain model for decoding); anything else is a one-line CheckpointError."""
    import t3d.model.sdar  # noqa: F401  (registers SDAR with the Auto classes)
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    check_checkpoint(path)
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise CheckpointError(f"dtype '{dtype}': expected one of {', '.join(DTYPES)}")
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if is_adapter(path):
        from peft import PeftModel

        base = load_model(adapter_base(path), dtype, "cpu")
        try:
            model = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
            raise CheckpointError(f"{path}: cannot apply the adapter to its base ({first_line(err)})") from None
        return model.to(device).eval()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, SafetensorError) as err:
        raise CheckpointError(f"{path}: cannot load the model ({first_line(err)})") from None
    return model.to(device).eval()


def load(path_or_id, dtype="fp32", device="cpu"):
    path = resolve_checkpoint(path_or_id)
    return load_model(path, dtype, device), load_tokenizer(path), path


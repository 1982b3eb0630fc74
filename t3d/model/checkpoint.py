"""Find, check, fingerprint and load a checkpoint: a local directory (the embedded default included) or a hub id.

A PEFT adapter directory (adapter_config.json + adapter_model.safetensors, as LoRA training saves) counts as a
checkpoint too: its base is its adapter_config.json's base_model_name_or_path (resolved the same way, a relative
one against the adapter directory first), and loading it gives base + adapter merged."""
import hashlib
import json
import os
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


def base_as_recorded(path):
    """(the base_model_name_or_path the adapter directory `path` records, or None; when that is a relative path, the
    folder it names beside the adapter (which need not exist), else None). Training records a base that moves
    with the adapter relative to it."""
    base = _json_object(Path(path) / ADAPTER_CONFIG).get("base_model_name_or_path")
    relative = bool(base) and not Path(str(base)).expanduser().is_absolute()
    return base, (Path(path).absolute() / str(base) if relative else None)


def adapter_base(path):
    """The resolved base checkpoint of an adapter directory; a one-line CheckpointError when it is missing.
    A relative base is looked up against the adapter directory first, then as any checkpoint_path (the current
    directory, the toolkit's home, the hub)."""
    base, beside = base_as_recorded(path)
    if not base:
        raise CheckpointError(f"{Path(path) / ADAPTER_CONFIG}: no base_model_name_or_path (the base model this "
                              "adapter applies to)")
    try:
        return resolve_checkpoint(str(beside) if beside is not None and beside.is_dir() else base)
    except FileNotFoundError as err:
        where = f"; beside the adapter it would be {os.path.realpath(beside)}" if beside is not None else ""
        raise CheckpointError(f"{Path(path) / ADAPTER_CONFIG}: base model not found: {first_line(err)}{where}") from None


def check_checkpoint(path):
    """Refuse, with one line naming the file, a directory that is not a loadable SDAR checkpoint:
    config.json must be a JSON object with model_type 'sdar' and sensible sizes (`check_config_values`), each
    safetensors file must be whole, and together they must hold exactly the tensors that config describes, with
    its shapes and dtype (`check_tensor_headers`; headers only, no weight is read).
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
    check_config_values(config, config_file)
    headers = {file: _check_safetensors(file) for file in sorted(path.glob("*.safetensors"))}
    if headers:
        check_tensor_headers(path, config, headers)
    return config


def _positive_int(config, key, config_file, default=None):
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{config_file}: {key} must be an integer >= 1, got {value!r}")
    return value


def check_config_values(config, config_file):
    """The sizes in a config.json must describe a buildable model; one line naming the first bad key."""
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        _positive_int(config, key, config_file)
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads")
    kv_heads = heads if kv_heads is None else _positive_int(config, "num_key_value_heads", config_file)
    if heads % kv_heads:
        raise CheckpointError(f"{config_file}: num_key_value_heads {kv_heads} must divide num_attention_heads {heads}")
    if config.get("head_dim") is None:
        if config["hidden_size"] % heads:
            raise CheckpointError(f"{config_file}: hidden_size {config['hidden_size']} is not divisible by "
                                  f"num_attention_heads {heads} (and no head_dim is given)")
    elif _positive_int(config, "head_dim", config_file) % 2:
        raise CheckpointError(f"{config_file}: head_dim must be even (rotary embeddings rotate pairs), "
                              f"got {config['head_dim']}")
    eps = config.get("rms_norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise CheckpointError(f"{config_file}: rms_norm_eps must be a number in (0, 1), got {eps!r}")
    dtype = config_dtype(config)
    if dtype is not None and dtype not in DTYPES:
        raise CheckpointError(f"{config_file}: torch_dtype {dtype!r}: expected one of {', '.join(DTYPES)}")


def config_dtype(config):
    """The weights' dtype a config.json declares ('dtype' since transformers 4.56, 'torch_dtype' before), or None."""
    dtype = config.get("dtype", config.get("torch_dtype"))
    return None if dtype is None else str(dtype).replace("torch.", "")


# safetensors header dtype names of the floating dtypes a checkpoint may hold
SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def expected_tensors(config):
    """Tensor name -> shape of an SDARForCausalLM built from a config.json dict (on the meta device: no memory).
    With tied embeddings lm_head.weight is the embedding, saved once: it is left out."""
    import t3d.model.sdar  # noqa: F401
    from t3d.model.sdar import SDARConfig, SDARForCausalLM

    with torch.device("meta"):
        model = SDARForCausalLM(SDARConfig.from_dict(dict(config)))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def check_tensor_headers(path, config, headers):
    """Exactly the tensors `config` describes, each with its shape and the config's dtype, from the safetensors
    headers alone; a sharded checkpoint's index must name only files that exist and tensors where they are."""
    path = Path(path)
    config_file = path / "config.json"
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map = _json_object(index_file).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_file}: no weight_map object")
        for name, shard in weight_map.items():
            if path / str(shard) not in headers:
                raise CheckpointError(f"{index_file}: tensor {name} is in {shard}, which is missing")
            if name not in headers[path / str(shard)]:
                raise CheckpointError(f"{path / str(shard)}: tensor {name} is missing (the index places it there)")
        headers = {file: header for file, header in headers.items() if file.name in set(weight_map.values())}
    found = {}
    for file, header in headers.items():
        for name, meta in header.items():
            if name in found:
                raise CheckpointError(f"{file}: tensor {name} is also in {found[name][0].name}")
            found[name] = (file, meta)
    try:
        expected = expected_tensors(config)
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{config_file}: cannot build the model it describes ({first_line(err)})") from None
    tied = bool(config.get("tie_word_embeddings", False))
    for name in expected:
        if name not in found:
            raise CheckpointError(f"{path}: tensor {name} is missing from the weights{_layers_note(config, found)}")
    dtype = config_dtype(config)
    want_dtype, first_dtype = DTYPES.get(dtype) if dtype else None, None
    for name, (file, meta) in found.items():
        shape = expected.get(name, expected.get("model.embed_tokens.weight") if tied and name == "lm_head.weight" else None)
        if shape is None:
            raise CheckpointError(f"{file}: unexpected tensor {name}, not part of the model config.json "
                                  f"describes{_layers_note(config, found)}")
        if tuple(meta.get("shape", ())) != shape:
            raise CheckpointError(f"{file}: tensor {name} has shape {list(meta.get('shape', ()))}, "
                                  f"config.json gives {list(shape)}")
        got = SAFETENSORS_DTYPES.get(meta.get("dtype"))
        first_dtype = first_dtype or got
        # the config's dtype, or fp32 (a lossless superset); without a config dtype, one dtype throughout
        ok = got is not None and (got in (want_dtype, torch.float32) if want_dtype is not None else got == first_dtype)
        if not ok:
            want = (f"config.json's {dtype} (or F32)" if want_dtype is not None
                    else "one floating dtype (F32, BF16 or F16) for every tensor")
            raise CheckpointError(f"{file}: tensor {name} has dtype {meta.get('dtype')}, expected {want}")


def _layers_note(config, found):
    layers = {int(n.split(".")[2]) for n in found if n.startswith("model.layers.") and n.split(".")[2].isdigit()}
    if len(layers) == config["num_hidden_layers"]:
        return ""
    return f" (config.json has num_hidden_layers={config['num_hidden_layers']}, the weights hold {len(layers)} layers)"


def check_finite(model, where):
    """No NaN or Inf in any weight (per tensor, in slices so the check needs little memory); one line naming
    the first bad tensor."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            flat = tensor.reshape(-1)
            for start in range(0, flat.numel(), 1 << 24):
                if not torch.isfinite(flat[start:start + (1 << 24)]).all():
                    raise CheckpointError(f"{where}: tensor {name} holds NaN or Inf values")


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
    return {k: t for k, t in header.items() if k != "__metadata__"}


def local_dir(raw):
    """The local directory a checkpoint spec names: as given, else relative to the toolkit's home (the checkout);
    None when neither exists."""
    raw = str(raw)
    return next((c for c in (Path(raw).expanduser(), HOME / raw) if c.is_dir()), None)


def hub_id(raw):
    """`raw` when it can only name a hub repository (owner/name, and no local directory of that name), else None."""
    raw = str(raw or "")
    shaped = raw.count("/") == 1 and not raw.startswith(("/", ".", "~"))
    return raw if shaped and local_dir(raw) is None else None


def resolve_checkpoint(path_or_id):
    """Local path (as given, else relative to the toolkit's home (the checkout)) or a hub repo id fetched with huggingface_hub."""
    if path_or_id is None or str(path_or_id).strip() in ("", "null", "None"):
        return str(DEFAULT_MODEL)
    raw = str(path_or_id)
    candidate = local_dir(raw)
    if candidate is not None:
        if not (candidate / "config.json").is_file() and not is_adapter(candidate):
            raise FileNotFoundError(f"checkpoint directory {candidate} has no config.json (nor {ADAPTER_CONFIG})")
        return str(candidate.resolve())
    if hub_id(raw) is None:
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
        # fix_mistral_regex=False: transformers 4.57.3+ (before 5.0) warns that the tokenizer of any local checkpoint
        # saved by those versions has Mistral's "incorrect regex pattern"; SDAR's Qwen tokenizer is no Mistral one
        # (its tokenization is checked identical), so the warning is false here. Not kept in what is saved.
        tokenizer = AutoTokenizer.from_pretrained(path, fix_mistral_regex=False)
        tokenizer.init_kwargs.pop("fix_mistral_regex", None)
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


ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "flex_attention", "flash_attention_2", "eager")


def attn_implementation_problem(name, device="cpu", training=False):
    """Why attention implementation `name` cannot run here (None when it can)."""
    if name not in ATTN_IMPLEMENTATIONS[1:]:
        return f"unknown attention implementation {name!r} (expected one of {', '.join(ATTN_IMPLEMENTATIONS)})"
    on_cuda = str(device).startswith("cuda")
    if name == "flex_attention":
        try:
            import torch.nn.attention.flex_attention  # noqa: F401
        except ImportError:
            return "flex_attention needs torch >= 2.5"
        if training and not on_cuda:
            return "flex_attention has no CPU backward in this torch (training on CPU needs sdpa or eager)"
    if name == "flash_attention_2":
        from t3d.model.sdar.modeling_sdar import _flash_attn_func

        if not on_cuda or _flash_attn_func() is None:
            return "flash_attention_2 needs the flash-attn package and a CUDA device"
    return None


def choose_attn_implementation(requested, config, device="cpu", training=False):
    """The attention kernel to run: `requested`, or for "auto" the checkpoint config.json's own
    attn_implementation when it runs well on this device (FlexAttention: CUDA only), else sdpa.
    An explicit choice that cannot run here is a one-line CheckpointError."""
    requested = "auto" if requested in (None, "") else str(requested)
    if requested == "auto":
        own = config.get("attn_implementation")
        if own == "flex_attention" and not str(device).startswith("cuda"):
            return "sdpa"  # off CUDA, FlexAttention runs unfused: slower than SDPA, and it has no backward
        return own if own and attn_implementation_problem(own, device, training) is None else "sdpa"
    problem = attn_implementation_problem(requested, device, training)
    if problem:
        raise CheckpointError(f"attn_implementation: {problem}")
    return requested


def load_model(path, dtype="fp32", device="cpu", attn_implementation="auto", training=False):
    """An SDAR model from a checkpoint directory, its weights created directly in `dtype` (no fp32 copy of a
    bf16 model); an adapter directory gives its base with the adapter merged in, a plain model for decoding.

    Before loading, the config's sizes and every safetensors header are checked against each other
    (`check_checkpoint`); after, every weight must be finite. `attn_implementation`: see
    `choose_attn_implementation` (`training`: the model will run backward, which flex_attention lacks on CPU);
    the choice is in `model.config._attn_implementation`. Anything wrong is a one-line CheckpointError."""
    import t3d.model.sdar  # noqa: F401  (registers SDAR with the Auto classes)
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    config = check_checkpoint(path)
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise CheckpointError(f"dtype '{dtype}': expected one of {', '.join(DTYPES)}")
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    implementation = choose_attn_implementation(attn_implementation, config, device, training)
    if is_adapter(path):
        from peft import PeftModel

        base = load_model(adapter_base(path), dtype, "cpu", implementation, training)
        try:
            model = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
            raise CheckpointError(f"{path}: cannot apply the adapter to its base ({first_line(err)})") from None
        check_finite(model, f"{path} (merged with its base)")
        return model.to(device).eval()
    try:
        # loaded with sdpa (transformers validates its own kernel names), then switched: SDAR reads the choice
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa",
                                                           output_loading_info=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise CheckpointError(f"{path}: cannot load the model ({first_line(err)})") from None
    # the safetensors headers were checked already; this catches the same for other weight formats (.bin)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(kind):
            first = sorted(info[kind])[0]
            first = first[0] if isinstance(first, tuple) else first
            raise CheckpointError(f"{path}: tensor {first} is {kind.split('_')[0]} in the weights")
    check_finite(model, path)
    model.config._attn_implementation = implementation
    return model.to(device).eval()


def load(path_or_id, dtype="fp32", device="cpu", attn_implementation="auto"):
    path = resolve_checkpoint(path_or_id)
    return load_model(path, dtype, device, attn_implementation), load_tokenizer(path), path

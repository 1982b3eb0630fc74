"""A random-weight checkpoint with a released SDAR's exact files, shapes and shard layout, minus most layers.

From a release directory (config.json, tokenizer files, chat template, generation config and
model.safetensors.index.json, no weights) this writes a loadable checkpoint: the release's config with only
`num_hidden_layers` overridden, its tokenizer and templates copied unchanged, and random weights in the
release's dtype, split into the release's shard files by its own index (tensor names as released). Tests and
benchmarks then meet what a user of the real checkpoint meets (vocabulary 151,936, hidden 2,560, sharded
safetensors, `auto_map`, `attn_implementation`) at a size a CPU can hold: SDAR-4B with 2 layers is 0.98 B
parameters, 2 GB of bf16.
"""
import json
import shutil
from pathlib import Path

import torch

from t3d.model.checkpoint import DTYPES, CheckpointError, expected_tensors

INDEX = "model.safetensors.index.json"
LAYER_PREFIX = "model.layers."


def _layer_of(name):
    return int(name[len(LAYER_PREFIX):].split(".", 1)[0]) if name.startswith(LAYER_PREFIX) else None


def build_random_checkpoint(release_dir, out, num_hidden_layers=2, seed=0, std=0.02, **overrides):
    """Write the checkpoint into `out` (created); returns `out` as a Path. Tensors the release's index places
    in a shard stay in that shard (layers beyond `num_hidden_layers` are left out), and a new index is written.
    `overrides` change other config.json values (e.g. vocab_size, for a model that fits a small machine; the
    tokenizer then no longer matches the embedding)."""
    from safetensors.torch import save_file

    release, out = Path(release_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config_json = json.loads((release / "config.json").read_text(encoding="utf-8"))
    config_json.update(overrides, num_hidden_layers=int(num_hidden_layers))
    (out / "config.json").write_text(json.dumps(config_json, indent=2) + "\n", encoding="utf-8")
    for file in release.iterdir():
        if file.is_file() and file.name not in ("config.json", INDEX) and not file.name.endswith(".md"):
            shutil.copyfile(file, out / file.name)

    dtype = DTYPES[str(config_json.get("torch_dtype", "float32")).replace("torch.", "")]
    shapes = expected_tensors(config_json)
    weight_map = json.loads((release / INDEX).read_text(encoding="utf-8"))["weight_map"]
    kept = {name: shard for name, shard in weight_map.items()
            if _layer_of(name) is None or _layer_of(name) < num_hidden_layers}
    if set(kept) != set(shapes):
        odd = sorted(set(kept) ^ set(shapes))[0]
        raise CheckpointError(f"{release / INDEX}: tensor {odd} does not match SDARForCausalLM's layout")

    generator = torch.Generator().manual_seed(seed)
    total = 0
    for shard in sorted(set(kept.values())):
        tensors = {}
        for name in sorted(n for n, s in kept.items() if s == shard):
            if name.endswith("norm.weight"):  # RMSNorm scales: ones, as a fresh model has them
                tensors[name] = torch.ones(shapes[name], dtype=dtype)
            else:
                tensors[name] = torch.empty(shapes[name], dtype=dtype).normal_(0.0, std, generator=generator)
            total += tensors[name].numel() * tensors[name].element_size()
        save_file(tensors, str(out / shard), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(kept.items()))}
    (out / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return out

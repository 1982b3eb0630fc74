"""LoRA through PEFT for both trainers: the `model.lora` config, adapters on the loaded model, the T3D reference
as the same model without (or with a frozen snapshot of) its adapters, and adapter checkpoints.

Self-play rounds: the trainable adapter ("default") is never reset. Round 1's reference is the base with the
adapters disabled; at each round boundary the adapter's weights are copied into a frozen second adapter
("reference", adapter-sized), and later rounds' reference is the base plus that snapshot. The base weights never
change, so every saved adapter applies to the original `model.pretrained_model` and a resume only needs the model
state (which holds both adapters). Unlike merging and restarting, the total update stays of rank r.

Loading an adapter directory (base + adapter, merged) is `t3d.model.checkpoint.load_model`'s job.

What an adapter records as its base (adapter_config.json's base_model_name_or_path): `model.lora.base_name`
verbatim when set; else the hub id when the base came from the hub; else a local base inside the run's
`experiment.output_dir` (where the run writes the adapter too, so the two move together) as a path relative to
the adapter directory; else the base's absolute path. Its task_type is CAUSAL_LM, so that
peft.AutoPeftModelForCausalLM loads it (docs/lora.md).
"""
import copy
import math
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from t3d.common.config import ConfigError
from t3d.model.checkpoint import local_dir

# The linear layers of an SDAR decoder layer. lm_head is not among them: the chunked head
# (t3d.train.token_logprobs) multiplies by lm_head.weight itself, so an adapter there would be skipped.
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TRAINED, SNAPSHOT = "default", "reference"


def lora_config(cfg):
    """peft.LoraConfig from `model.lora`, or None when LoRA is off (r null); one-line ConfigError on bad values."""
    spec = cfg.model.get("lora")
    if spec is None or spec.get("r") is None:
        return None
    r, alpha, dropout, targets = spec.r, spec.alpha, spec.dropout, spec.target_modules
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ConfigError(f"model.lora.r must be null (off) or an integer >= 1, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"model.lora.alpha must be a number > 0, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"model.lora.dropout must be a number in [0, 1), got {dropout!r}")
    targets = list(targets or [])
    unknown = [t for t in targets if t not in TARGETS]
    if not targets or unknown:
        raise ConfigError(f"model.lora.target_modules: {'unknown module ' + repr(unknown[0]) if unknown else 'empty'}; "
                          f"choose from {', '.join(TARGETS)}")
    if len(set(targets)) != len(targets):
        raise ConfigError(f"model.lora.target_modules lists a module twice: {targets}")
    if not isinstance(spec.get("save_merged", False), bool):
        raise ConfigError(f"model.lora.save_merged must be true or false, got {spec.save_merged!r}")
    base_name(cfg)
    from peft import LoraConfig

    # No task_type while training: get_peft_model then builds the plain PeftModel, whose forward hands the
    # trainer's call (head_fn, logits_to_keep, position_ids, ...) to SDAR exactly as made. PeftModelForCausalLM's
    # forward re-spells it with its own keywords (labels, inputs_embeds, output_attentions, return_dict: None)
    # and would be one more code path under the trainers. Saved adapters say CAUSAL_LM (save_adapter).
    return LoraConfig(r=r, lora_alpha=float(alpha), lora_dropout=float(dropout), target_modules=targets, bias="none")


def base_name(cfg):
    """`model.lora.base_name`: None, or what adapters record as their base instead (a hub id or a path, written
    verbatim); a one-line ConfigError for anything but a non-empty single-line string."""
    name = (cfg.model.get("lora") or {}).get("base_name")
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip() or name != name.strip() or not name.isprintable():
        raise ConfigError("model.lora.base_name must be null (record the base the run loads) or the hub id or path "
                          f"adapters record as their base, e.g. 'JetLM/SDAR-4B-Chat'; got {name!r}")
    return name


def base_source(spec, resolved, name=None):
    """What an adapter records as its base before `recorded_base` places it: `name` (model.lora.base_name)
    verbatim when given; the hub id when the model came from the hub (so the adapter loads on another machine);
    else the resolved absolute directory."""
    if name is not None:
        return name
    local = spec in (None, "") or local_dir(spec) is not None
    return str(resolved) if local else str(spec)


def recorded_base(source, directory, tree):
    """The base `directory`'s adapter_config.json records, from `source` (base_source's answer): an absolute local
    base that lies inside `tree` (a run's experiment.output_dir, which holds the adapter directory too) as a path
    relative to `directory`, so that moving or copying the tree keeps the two together; anything else (a hub id,
    a base outside the tree, any source when `tree` is None, as for model.lora.base_name) unchanged.
    `directory` need not exist yet; symbolic links are resolved on both sides."""
    base = Path(str(source))
    if tree is None or not base.is_absolute() or not base.is_dir():
        return source
    tree, base = Path(tree).resolve(), base.resolve()
    directory = Path(directory).absolute()
    directory = directory.parent.resolve() / directory.name
    if not (base.is_relative_to(tree) and directory.is_relative_to(tree)):
        return source
    return os.path.relpath(base, directory)


def add_adapters(model, config, source, snapshot=False, bf16_base=False):
    """get_peft_model: the base frozen (bf16 when training in bf16: it is never updated, so it needs no fp32
    master), zero-effect adapters (B = 0) trainable in fp32; plus, for self-play, the frozen snapshot adapter."""
    from peft import get_peft_model

    if bf16_base:
        model = model.to(torch.bfloat16)
    model = get_peft_model(model, config)  # A ~ kaiming (global RNG, seeded by setup_process), B = 0
    model.peft_config[TRAINED].base_model_name_or_path = source
    if snapshot:
        frozen = copy.deepcopy(config)
        frozen.lora_dropout, frozen.inference_mode = 0.0, True
        model.add_adapter(SNAPSHOT, frozen)
    return model


def describe(model):
    """One line for the log: how many parameters train."""
    return f"LoRA: {sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.3f}M trainable adapter parameters"


def is_peft(model):
    from peft import PeftModel

    return isinstance(model, PeftModel)


@contextmanager
def _snapshot_active(model):
    model.set_adapter(SNAPSHOT, inference_mode=True)
    try:
        yield
    finally:
        model.set_adapter(TRAINED)  # the trained adapter active and trainable again, the snapshot frozen


class AdapterReference:
    """The T3D reference of a LoRA run: the same (unwrapped) PeftModel, run without the trained adapter.

    `at(epoch)` is the reference forward for that epoch: adapters disabled in round 1, the snapshot adapter from
    round 2 on (a pure function of the epoch, so a resume picks the right one). `refresh()` copies the trained
    adapter into the snapshot at a round boundary (frozen parameters outside the optimizer, so ZeRO-1/2 and DDP
    replicas stay in step: every rank copies the same values)."""

    def __init__(self, model, rounds, every):
        self.model, self.rounds, self.every = model, rounds, int(every)

    def at(self, epoch):
        return self._snapshot if self.rounds and epoch >= self.every else self._base

    def _base(self, **kwargs):
        with self.model.disable_adapter():
            return self.model(**kwargs)

    def _snapshot(self, **kwargs):
        with _snapshot_active(self.model):
            return self.model(**kwargs)

    @torch.no_grad()
    def refresh(self):
        params = dict(self.model.named_parameters())
        for name, p in params.items():
            if f".{SNAPSHOT}." in name:
                p.copy_(params[name.replace(f".{SNAPSHOT}.", f".{TRAINED}.")])


def save_adapter(model, state, directory, merged, base=None):
    """The trained adapter (adapter_config.json with its base and task_type CAUSAL_LM, adapter_model.safetensors)
    into `directory`; `base`: the base it records (default: add_adapters' source; see recorded_base). With
    `merged`, base + adapter merged as a full model under directory/merged (built from a copy: the training
    model is untouched, so a resumed run stays bit-identical)."""
    config = model.peft_config[TRAINED]
    kept = config.task_type, config.base_model_name_or_path
    # CAUSAL_LM only in the file (PEFT then writes no auto_mapping naming t3d's module): AutoPeftModelForCausalLM
    # and PeftModel.from_pretrained build a PeftModelForCausalLM from it; the training model stays a plain PeftModel
    config.task_type = "CAUSAL_LM"
    config.base_model_name_or_path = kept[1] if base is None else str(base)
    try:
        # save_embedding_layers=False: adapters never touch the embeddings (TARGETS), so PEFT need not inspect it
        model.save_pretrained(directory, state_dict=state, selected_adapters=[TRAINED], safe_serialization=True,
                              save_embedding_layers=False)
    finally:
        config.task_type, config.base_model_name_or_path = kept
    if merged:
        full = copy.deepcopy(model).merge_and_unload(adapter_names=[TRAINED])
        full.save_pretrained(Path(directory) / "merged", safe_serialization=True)
        return full
    return None

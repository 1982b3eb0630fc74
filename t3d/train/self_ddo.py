"""Stage 3: T3D training of an SDAR model on its own rollout trajectories (DDO + path loss).

    accelerate launch --config_file accelerate_configs/<...>.yaml train/self_ddo_sdar_full.py \
        config=configs/ddo_sdar_full_self.yaml
    python train/self_ddo_sdar_full.py config=configs/ddo_sdar_full_self.yaml [key.sub=value ...]
"""
import os
from contextlib import nullcontext

import torch

from t3d.train import lora
from t3d.train.checkpoints import check_attn_setting, record_attn_implementation
from t3d.train.data import load_examples, resolve_data_path
from t3d.train.loop import fit, open_run
from t3d.train.objectives import T3DSettings, t3d_micro_step
from t3d.train.runtime import (
    check_common, main_print, make_accelerator, run_dir, setup_process, zero_stage,
)
from t3d.model.checkpoint import check_checkpoint, load_model, load_tokenizer, resolve_checkpoint
from t3d.common.cli import run_main
from t3d.common.config import ConfigError
from t3d.common.paths import CONFIGS
from t3d.common.io import check_output_dir


DEFAULT_CONFIG = CONFIGS / "ddo_sdar_full_self.yaml"


def check_config(cfg):
    check_common(cfg)
    tr = cfg.training
    if tr.method != "semi-ar":
        raise ConfigError(f"training.method '{tr.method}' is not supported (only semi-ar)")
    if tr.mask_strategy not in ("trace", "random"):
        raise ConfigError(f"training.mask_strategy must be trace or random, got '{tr.mask_strategy}'")
    if not tr.mask_ratios or not all(0 < float(r) <= 1 for r in tr.mask_ratios):
        raise ConfigError(
            f"training.mask_ratios must be a non-empty list of values in (0, 1], got {list(tr.mask_ratios)}")
    for key in ("path_k_steps", "round_interval"):
        if int(tr[key]) < 1:
            raise ConfigError(f"training.{key} must be >= 1, got {tr[key]}")
    for key in ("lambda_ddo", "lambda_path"):
        if float(tr[key]) < 0:
            raise ConfigError(f"training.{key} must be >= 0, got {tr[key]}")
    if tr.get("ddo_reduction", "mean") not in ("mean", "sum"):
        raise ConfigError(f"training.ddo_reduction must be mean or sum, got '{tr.ddo_reduction}'")
    if float(tr.get("ddo_grad_scale", 1.0)) < 0:
        raise ConfigError(f"training.ddo_grad_scale must be >= 0, got {tr.ddo_grad_scale}")
    if tr.get("reference_update", "rounds") not in ("rounds", "ema"):
        raise ConfigError(f"training.reference_update must be rounds or ema, got '{tr.reference_update}'")
    if tr.get("reference_update", "rounds") == "ema":
        if not 0 <= float(tr.ema_decay) < 1:
            raise ConfigError(f"training.ema_decay must lie in [0, 1), got {tr.ema_decay}")
        if cfg.model.lora.get("r") is not None:
            raise ConfigError("training.reference_update=ema is not supported with model.lora (use rounds)")
        if str(tr.mixed_precision) == "bf16":  # a bf16 reference rounds away updates of (1 - decay) x the gap
            raise ConfigError("training.reference_update=ema needs an fp32 reference (training.mixed_precision=no)")
    if tr.get("exact_grad_share", False) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # its extra backward passes through the model would run the distributed engine's gradient hooks
        raise ConfigError("training.exact_grad_share runs in one process only (ddo_grad_share is logged anyway)")
    lora.lora_config(cfg)  # its one-line errors before anything is loaded
    check_attn_setting(cfg)
    if float(tr.target_temp) != 0.0:
        main_print("note: training.target_temp has no effect (as in the original, the fake sample is the reference's)")


def training_models(cfg, path):
    """(target, reference, LoRA config or None), each model loaded once, straight in the dtype it trains or
    serves in (no fp32 copy of a bf16 model, no deep copy):
      * full T3D: the target in fp32 (the master weights the optimizer updates; autocast runs it in bf16 under
        mixed_precision=bf16) and the reference, frozen and in eval mode, loaded again in bf16 when training in
        bf16 (else fp32), outside the optimizer;
      * LoRA: the base in bf16 when training in bf16 (it is never updated, so it needs no fp32 master) with fp32
        adapters; the reference is this same model with its adapters disabled.
    Both are loaded before the Accelerator exists: under ZeRO-3 a model loaded after it comes partitioned, and
    the reference must stay whole on every rank."""
    tr = cfg.training
    bf16 = str(tr.mixed_precision) == "bf16"
    adapters = lora.lora_config(cfg)
    requested = cfg.model.get("attn_implementation", "auto")
    if adapters is None:
        model = load_model(path, "fp32", "cpu", requested, training=True).train()
        chosen = model.config._attn_implementation  # the reference runs the same kernel as the target
        ref = load_model(path, "bf16" if bf16 else "fp32", "cpu", chosen).requires_grad_(False).eval()
        return model, ref, None
    model = load_model(path, "bf16" if bf16 else "fp32", "cpu", requested, training=True).train()
    # the reference is this model without its adapters: no second copy of the weights
    base = lora.base_source(cfg.model.pretrained_model, path, lora.base_name(cfg))
    model = lora.add_adapters(model, adapters, base, snapshot=bool(tr.multi_round), bf16_base=bf16)
    ref = lora.AdapterReference(model, bool(tr.multi_round), int(tr.round_interval))
    main_print(lora.describe(model) + "; the reference is this model without them")
    return model, ref, adapters


def copy_weights(accelerator, model, ref):
    """reference <- target. ZeRO-3 shards are gathered on every rank (get_state_dict would fill rank 0 only)."""
    src = accelerator.unwrap_model(model)
    params = list(src.parameters())
    if zero_stage(accelerator) == 3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    else:
        gather = nullcontext()
    with gather, torch.no_grad():
        for p_ref, p in zip(ref.parameters(), params):
            p_ref.copy_(p)


def round_refresher(accelerator, ref, every, epochs):
    def on_epoch_end(epoch, model):
        done = epoch + 1
        if done % every or done >= epochs:
            return False
        if isinstance(ref, lora.AdapterReference):
            ref.refresh()  # snapshot adapter <- trained adapter
        else:
            copy_weights(accelerator, model, ref)
        accelerator.print(f"round {done // every} finished at epoch {done}: reference <- target")
        return True

    return on_epoch_end


def run_t3d_job(cfg):
    check_config(cfg)
    tr, root = cfg.training, run_dir(cfg)
    check_output_dir(root, "experiment.output_dir")
    setup_process(cfg)
    path = resolve_checkpoint(cfg.model.pretrained_model)
    check_checkpoint(path)  # a damaged or foreign checkpoint is one line before its tokenizer is read
    tokenizer = load_tokenizer(path)
    data_path = resolve_data_path(cfg.dataset.optimization_data, cfg.dataset)
    examples = load_examples(
        data_path, tokenizer, max_prompt_len=int(tr.max_prompt_len), max_gen_length=int(tr.max_gen_length),
        post_num=int(tr.post_num), skip_invalid=bool(tr.skip_invalid_records), block_size=int(tr.block_size),
        log=main_print, dataset_cfg=cfg.dataset,
    )
    model, ref, adapters = training_models(cfg, path)
    record_attn_implementation(cfg, model)
    accelerator = make_accelerator(cfg, root)
    if adapters is None:
        ref = ref.to(accelerator.device)
    elif zero_stage(accelerator) == 3:
        raise ConfigError("model.lora is not supported under DeepSpeed ZeRO-3 (use DDP or ZeRO-1/2)")
    if tr.gradient_checkpointing_enable:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    run = open_run(cfg, accelerator, root, data_path, path)
    special = set(tokenizer.all_special_ids)
    settings = T3DSettings(
        seed=int(tr.seed), block_size=int(tr.block_size), mask_id=tokenizer.mask_token_id,
        vocab_ids=torch.tensor([i for i in range(tokenizer.vocab_size) if i not in special]),
        mask_strategy=str(tr.mask_strategy), mask_ratios=tuple(float(r) for r in tr.mask_ratios),
        mask_ratio_exponent=float(tr.mask_ratio_exponent), random_ratio=float(cfg.model.random_ratio),
        alpha=float(tr.alpha), beta=float(tr.beta), reference_temp=float(tr.reference_temp),
        path_k_steps=int(tr.path_k_steps), lambda_path=float(tr.lambda_path), lambda_ddo=float(tr.lambda_ddo),
        ddo_reduction=str(tr.get("ddo_reduction", "mean")), ddo_grad_scale=float(tr.get("ddo_grad_scale", 1.0)),
        reference_update=str(tr.get("reference_update", "rounds")), ema_decay=float(tr.get("ema_decay", 0.999)),
        exact_grad_share=bool(tr.get("exact_grad_share", False)),
    )
    refresh = None
    if tr.multi_round and settings.reference_update == "rounds":  # ema moves the reference every step instead
        refresh = round_refresher(accelerator, ref, int(tr.round_interval), int(tr.num_train_epochs))
    reference = ref.at if adapters is not None else (lambda epoch: ref)  # (a LoRA snapshot lives in the model state)
    fit(cfg, accelerator, run, model, tokenizer, examples,
        lambda m, batch, epoch: t3d_micro_step(m, reference(epoch), batch, epoch, settings),
        extra_state=(ref,) if adapters is None else (), on_epoch_end=refresh)


def main(argv=None):
    run_main(run_t3d_job, argv, DEFAULT_CONFIG)

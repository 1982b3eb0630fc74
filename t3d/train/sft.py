"""Block-diffusion SFT of an SDAR model: from scratch (a fresh tiny SDAR) or fine-tuning a checkpoint.

Standard masked objective: every response block draws r ~ U(0, 1] and masks ceil(r * n) random tokens;
the loss is the mean cross-entropy over masked tokens. Same launch style and pieces as the T3D trainer:

    accelerate launch --config_file accelerate_configs/<...>.yaml train/sft_sdar.py config=configs/sft_sdar.yaml
    python train/sft_sdar.py config=configs/sft_sdar.yaml [key.sub=value ...]
"""

from t3d.train import lora
from t3d.train.checkpoints import check_attn_setting, record_attn_implementation
from t3d.train.data import load_examples, resolve_data_path
from t3d.train.loop import fit, open_run
from t3d.train.objectives import sft_micro_step
from t3d.train.runtime import check_common, make_accelerator, run_dir, setup_process, zero_stage
from t3d.model.checkpoint import check_checkpoint, choose_attn_implementation, load_model, load_tokenizer, resolve_checkpoint
from t3d.common.cli import run_main
from t3d.common.config import ConfigError
from t3d.common.paths import CONFIGS
from t3d.common.io import check_output_dir

SOURCES = ("items", "rollouts")


DEFAULT_CONFIG = CONFIGS / "sft_sdar.yaml"


def scratch_model(cfg, tokenizer):
    """A fresh SDAR with utils/build_tiny_sdar.py's architecture (overridable under model.scratch)."""
    from t3d.model.tiny import TINY_CONFIG
    from t3d.model.sdar import SDARConfig, SDARForCausalLM

    arch = {**TINY_CONFIG, **{k: v for k, v in (cfg.model.scratch or {}).items() if v is not None}}
    config = SDARConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, mask_token_id=tokenizer.mask_token_id, block_size=int(cfg.training.block_size), **arch,
    )
    return SDARForCausalLM(config)


def run_sft_job(cfg):
    tr, ds, root = cfg.training, cfg.dataset, run_dir(cfg)
    check_common(cfg)
    if ds.source not in SOURCES:
        raise ConfigError(f"dataset.source must be one of {', '.join(SOURCES)}, got '{ds.source}'")
    adapters = lora.lora_config(cfg)
    check_attn_setting(cfg)
    if adapters is not None and cfg.model.init_from_scratch:
        raise ConfigError("model.lora needs a pretrained base: set model.init_from_scratch=false")
    check_output_dir(root, "experiment.output_dir")
    setup_process(cfg)
    accelerator = make_accelerator(cfg, root)
    path = resolve_checkpoint(cfg.model.pretrained_model)
    if not cfg.model.init_from_scratch:  # a damaged or foreign checkpoint is one line before its tokenizer is read
        check_checkpoint(path)
    tokenizer = load_tokenizer(path)
    data_path = resolve_data_path(ds.optimization_data, ds)
    examples = load_examples(
        data_path, tokenizer, max_prompt_len=int(tr.max_prompt_len),
        max_gen_length=int(tr.max_gen_length), post_num=int(tr.post_num), skip_invalid=bool(tr.skip_invalid_records),
        kind="rollout" if ds.source == "rollouts" else "sft", data_type=str(ds.data_type),
        target_fields=tuple(ds.target_fields), block_size=int(tr.block_size), log=accelerator.print, dataset_cfg=ds,
    )
    # a LoRA base is never updated: in bf16 training it loads straight in bf16 (no fp32 copy); a fully trained
    # model loads in fp32, the master weights the optimizer updates
    dtype = "bf16" if adapters is not None and str(tr.mixed_precision) == "bf16" else "fp32"
    if cfg.model.init_from_scratch:
        model = scratch_model(cfg, tokenizer).train()
        model.config._attn_implementation = choose_attn_implementation(
            cfg.model.get("attn_implementation", "auto"), {}, accelerator.device, training=True)
    else:
        model = load_model(path, dtype, "cpu", cfg.model.get("attn_implementation", "auto"), training=True).train()
    record_attn_implementation(cfg, model)
    accelerator.print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters"
                      f" ({'from scratch' if cfg.model.init_from_scratch else path})")
    if adapters is not None:
        if zero_stage(accelerator) == 3:
            raise ConfigError("model.lora is not supported under DeepSpeed ZeRO-3 (use DDP or ZeRO-1/2)")
        base = lora.base_source(cfg.model.pretrained_model, path, lora.base_name(cfg))
        model = lora.add_adapters(model, adapters, base, bf16_base=str(tr.mixed_precision) == "bf16")
        accelerator.print(lora.describe(model))
    if tr.gradient_checkpointing_enable:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    run = open_run(cfg, accelerator, root, data_path, path)
    seed, block, mask_id = int(tr.seed), int(tr.block_size), tokenizer.mask_token_id
    fit(cfg, accelerator, run, model, tokenizer, examples,
        lambda m, batch, epoch: sft_micro_step(m, batch, epoch, seed, block, mask_id))


def main(argv=None):
    run_main(run_sft_job, argv, DEFAULT_CONFIG)

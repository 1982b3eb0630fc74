"""Process setup shared by the trainers: threads, seed, TF32, the Accelerator and its W&B tracker.

The training config is the source of truth for accumulation, clipping and precision; the accelerate
YAML chooses the topology (processes, DDP or DeepSpeed and its ZeRO stage).
"""
import math
import os
import uuid
from pathlib import Path

import torch
from omegaconf import OmegaConf

from t3d.common.errors import ExpectedError
from t3d.common.config import ConfigError, flatten
from t3d.common.paths import output_root
from t3d.tasks.prompting import DATA_TYPES

WANDB_MODES = ("disabled", "offline", "online")
PRECISIONS = ("no", "bf16", "fp16")
SAVE_DTYPES = ("auto", "fp32", "bf16")  # checkpoints' weights; auto = the training dtype (see save_dtype)


class TrainingError(ExpectedError, RuntimeError):
    """A run that must stop (non-finite loss, unusable resume point); one line."""


def run_dir(cfg):
    """`{experiment.output_dir}/{experiment.project}`; a relative output_dir is taken from the output root (the checkout, else the current directory)."""
    out = Path(str(cfg.experiment.output_dir)).expanduser()
    return (out if out.is_absolute() else output_root() / out) / str(cfg.experiment.project)


def _number(cfg, key, low, high=math.inf, low_open=False, high_open=False):
    """One-line ConfigError unless low <= cfg[key] <= high (strict at an open end) and finite."""
    value = OmegaConf.select(cfg, key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        span = f"{'(' if low_open else '['}{low}, {high}{')' if high_open or high == math.inf else ']'}"
        raise ConfigError(f"{key} must be a number in {span}, got {value!r}")


def check_common(cfg):
    """Checks shared by the trainers; one-line ConfigErrors naming the key."""
    tr = cfg.training
    for key in ("batch_size_lm", "gradient_accumulation_steps", "num_train_epochs", "block_size", "max_gen_length",
                "max_prompt_len"):
        if int(tr[key]) < 1:
            raise ConfigError(f"training.{key} must be >= 1, got {tr[key]}")
    if int(tr.post_num) < 0:
        raise ConfigError(f"training.post_num must be >= 0, got {tr.post_num}")
    if not 0 <= int(tr.seed) < 2**32:  # the range numpy's seeding (inside accelerate's set_seed) accepts
        raise ConfigError(f"training.seed must be in [0, 2**32), got {tr.seed}")
    if tr.num_threads is not None and int(tr.num_threads) < 1:
        raise ConfigError(f"training.num_threads must be null or >= 1, got {tr.num_threads}")
    if str(tr.mixed_precision) not in PRECISIONS:
        raise ConfigError(
            f"training.mixed_precision must be one of {', '.join(PRECISIONS)}, got '{tr.mixed_precision}'")
    if str(tr.get("save_dtype", "auto")) not in SAVE_DTYPES:
        raise ConfigError(f"training.save_dtype must be one of {', '.join(SAVE_DTYPES)}, got '{tr.save_dtype}'")
    if float(tr.max_grad_norm) != float(cfg.experiment.max_grad_norm):
        raise ConfigError("training.max_grad_norm is an alias: set experiment.max_grad_norm instead")
    if str(cfg.dataset.data_type) not in DATA_TYPES:
        raise ConfigError(f"dataset.data_type must be one of {', '.join(DATA_TYPES)}, got '{cfg.dataset.data_type}'")
    _number(cfg, "optimizer.params.learning_rate", 0, low_open=True)
    _number(cfg, "optimizer.params.beta1", 0, 1, high_open=True)
    _number(cfg, "optimizer.params.beta2", 0, 1, high_open=True)
    _number(cfg, "optimizer.params.epsilon", 0, low_open=True)
    _number(cfg, "optimizer.params.weight_decay", 0)
    _number(cfg, "lr_scheduler.params.warmup_steps", 0)
    _number(cfg, "lr_scheduler.params.min_lr_scale", 0, 1)
    _number(cfg, "experiment.save_every_steps", 0)
    if cfg.experiment.gradient_clipping:
        _number(cfg, "experiment.max_grad_norm", 0, low_open=True)
    if cfg.experiment.checkpoints_total_limit is not None:
        _number(cfg, "experiment.checkpoints_total_limit", 1)
    if cfg.experiment.start_from_scratch and tr.resume_from_checkpoint not in (None, ""):
        raise ConfigError(f"experiment.start_from_scratch=true contradicts training.resume_from_checkpoint="
                          f"{tr.resume_from_checkpoint}; set only one")


def main_print(*args):
    """print on rank 0 only (usable before the Accelerator exists)."""
    if os.environ.get("RANK", "0") == "0":
        print(*args, flush=True)


def setup_process(cfg):
    """Threads, TF32 and the seed, before any model is built."""
    from accelerate.utils import set_seed

    if cfg.training.get("num_threads"):
        torch.set_num_threads(int(cfg.training.num_threads))
    if torch.cuda.is_available():  # TF32 only means something on CUDA matmuls
        torch.backends.cuda.matmul.allow_tf32 = bool(cfg.training.enable_tf32)
        torch.backends.cudnn.allow_tf32 = bool(cfg.training.enable_tf32)
    set_seed(int(cfg.training.seed))


def wandb_mode(cfg):
    """The W&B mode of a run: the config's wandb.mode when given, else the environment's WANDB_MODE (the
    commands default it to disabled when the user has not set it, so there is never a login prompt)."""
    if cfg.wandb.mode is None:
        return os.environ.get("WANDB_MODE", "disabled")
    mode = str(cfg.wandb.mode)
    if mode not in WANDB_MODES:
        raise ConfigError(f"wandb.mode must be one of {', '.join(WANDB_MODES)} or null (= WANDB_MODE), got '{mode}'")
    return mode


def _wandb_env(cfg, directory):
    mode = wandb_mode(cfg)
    os.environ["WANDB_MODE"] = mode  # before wandb is imported anywhere
    os.environ.setdefault("WANDB_DIR", str(directory))
    os.environ.setdefault("WANDB_SILENT", "true")
    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        netrc = Path("~/.netrc").expanduser()
        if not (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")):
            raise ConfigError("wandb.mode=online needs WANDB_API_KEY or `wandb login`; use wandb.mode=offline")
    return mode


def make_accelerator(cfg, directory):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    mode = _wandb_env(cfg, directory)
    accum = int(cfg.training.gradient_accumulation_steps)
    clip = float(cfg.experiment.max_grad_norm) if cfg.experiment.gradient_clipping else 0.0
    # accelerate launch exports the YAML's DeepSpeed values; ours win
    os.environ["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] = str(accum)
    os.environ["ACCELERATE_GRADIENT_CLIPPING"] = str(clip)
    # Without CUDA: plain multi-process runs must be told they are on the CPU (accelerate then starts DDP
    # over gloo); DeepSpeed, which cpu=True would switch off, needs the gloo backend named instead.
    on_cpu = not torch.cuda.is_available()
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    handlers = [InitProcessGroupKwargs(backend="gloo")] if on_cpu and deepspeed and multi else []
    accelerator = Accelerator(
        cpu=on_cpu and not deepspeed,
        gradient_accumulation_steps=accum,
        mixed_precision=str(cfg.training.mixed_precision),
        log_with="wandb" if mode != "disabled" else None,
        project_dir=str(directory),
        kwargs_handlers=handlers,
    )
    if cfg.training.get("num_threads"):  # accelerate's multi-CPU setup may have reset it
        torch.set_num_threads(int(cfg.training.num_threads))
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:  # a deepspeed_config_file is not overridden by the env above
        plugin.deepspeed_config["gradient_accumulation_steps"] = accum
        plugin.deepspeed_config["gradient_clipping"] = clip
        micro = int(cfg.training.batch_size_lm)
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro
        plugin.deepspeed_config["train_batch_size"] = micro * accum * accelerator.num_processes
        if plugin.zero_stage == 3:  # save_pretrained needs whole weights
            plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    return accelerator


def save_dtype(cfg):
    """The dtype checkpoints are written in: training.save_dtype, where auto is the training dtype (bf16 under
    mixed_precision=bf16: the fp32 master copy is an optimizer detail, the resume state keeps it; else fp32)."""
    choice = str(cfg.training.get("save_dtype", "auto"))
    if choice == "auto":
        choice = "bf16" if str(cfg.training.mixed_precision) == "bf16" else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[choice]


def zero_stage(accelerator):
    plugin = accelerator.state.deepspeed_plugin
    return int(plugin.zero_stage) if plugin is not None else 0


def start_tracker(accelerator, cfg, directory, resuming=False):
    """accelerate's W&B tracker (when enabled); the run id is kept in the run dir so a resume continues it
    (a fresh start moved the earlier id aside, so it gets a new one)."""
    if wandb_mode(cfg) == "disabled":
        return
    id_file = Path(directory) / "wandb_run_id"
    run_id = cfg.wandb.run_id or (id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8])
    if accelerator.is_main_process:
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)
    accelerator.init_trackers(
        str(cfg.wandb.project or cfg.experiment.project),
        config=flatten(cfg),
        init_kwargs={"wandb": {
            "name": str(cfg.experiment.project), "id": run_id, "entity": cfg.wandb.entity,
            "resume": "allow" if cfg.wandb.resume or resuming else None,
            "dir": str(directory),
        }},
    )

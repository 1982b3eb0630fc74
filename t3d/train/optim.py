"""AdamW and the learning-rate schedule from the `optimizer` / `lr_scheduler` config sections."""
import math

from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR

from t3d.common.config import ConfigError

SCHEDULERS = ("cosine", "constant")


def learning_rate(cfg, total_batch_size):
    """optimizer.params.learning_rate, times the total batch size when scale_lr is set."""
    lr = float(cfg.optimizer.params.learning_rate)
    return lr * total_batch_size if cfg.optimizer.params.scale_lr else lr


def make_optimizer(model, cfg, lr):
    if str(cfg.optimizer.name).lower() != "adamw":
        raise ConfigError(f"optimizer.name '{cfg.optimizer.name}' is not supported (only adamw)")
    p = cfg.optimizer.params
    params = [q for q in model.parameters() if q.requires_grad]
    return AdamW(params, lr=lr, betas=(float(p.beta1), float(p.beta2)), eps=float(p.epsilon),
                 weight_decay=float(p.weight_decay or 0.0))


def lr_scale(step, warmup, total, schedule="cosine", min_scale=0.0):
    """Multiplier of the base lr for optimizer step `step` (0-based): linear warm-up over `warmup` steps
    (the first step already gets 1/warmup, never 0), then cosine from 1 down towards min_scale at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_scale + (1.0 - min_scale) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer, cfg, total_steps):
    """LambdaLR over `lr_scale`; stepped once per optimizer step by the loop (not by accelerate, which
    would step it once per process)."""
    name, p = str(cfg.lr_scheduler.scheduler), cfg.lr_scheduler.params
    if name not in SCHEDULERS:
        raise ConfigError(f"lr_scheduler.scheduler '{name}' is not supported (one of {', '.join(SCHEDULERS)})")
    warmup, min_scale = int(p.warmup_steps), float(p.min_lr_scale)
    return LambdaLR(optimizer, lambda step: lr_scale(step, warmup, total_steps, name, min_scale))

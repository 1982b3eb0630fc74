"""AdamW and the learning-rate schedule from the `optimizer` / `lr_scheduler` config sections."""
from torch.optim import AdamW

from utils.config import ConfigError

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


def make_scheduler(optimizer, cfg, total_steps):
    """Linear warm-up, then cosine decay to min_lr_scale * lr at `total_steps` (or constant).
    Stepped once per optimizer step by the loop (not by accelerate, which would step it once per process)."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

    name, p = str(cfg.lr_scheduler.scheduler), cfg.lr_scheduler.params
    warmup = int(p.warmup_steps)
    if name == "cosine":
        return get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, num_warmup_steps=warmup, num_training_steps=max(total_steps, 1),
            min_lr_rate=float(p.min_lr_scale),
        )
    if name == "constant":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    raise ConfigError(f"lr_scheduler.scheduler '{name}' is not supported (one of {', '.join(SCHEDULERS)})")

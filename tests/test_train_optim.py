"""Learning-rate schedule and AdamW settings from the config."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from t3d.train.optim import learning_rate, lr_scale, make_optimizer, make_scheduler
from t3d.common.config import ConfigError


def test_lr_scale_warmup_then_cosine_to_min():
    assert [lr_scale(s, 2, 10, "cosine", 0.1) for s in (0, 1)] == [0.5, 1.0]  # never a zero-lr step
    assert lr_scale(2, 2, 10, "cosine", 0.1) == 1.0
    assert lr_scale(6, 2, 10, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_scale(10, 2, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_scale(50, 2, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_scale(0, 0, 10, "cosine", 0.1) == 1.0
    assert [lr_scale(s, 4, 10, "constant") for s in (0, 3, 9)] == [0.25, 1.0, 1.0]


def _cfg(**over):
    cfg = OmegaConf.create({
        "optimizer": {"name": "adamw", "params": {"learning_rate": 1e-3, "scale_lr": False, "beta1": 0.8, "beta2": 0.9,
                                                   "weight_decay": 0.01, "epsilon": 1e-6}},
        "lr_scheduler": {"scheduler": "cosine", "params": {"warmup_steps": 1, "min_lr_scale": 0.5}},
    })
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{k}={v}" for k, v in over.items()]))


def test_optimizer_and_scheduler_follow_the_config():
    model = torch.nn.Linear(2, 2)
    cfg = _cfg()
    opt = make_optimizer(model, cfg, learning_rate(cfg, 16))
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (1e-3, (0.8, 0.9), 1e-6, 0.01)
    sched = make_scheduler(opt, cfg, total_steps=3)
    lrs = []
    for _ in range(3):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3 * (0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi * 0.5)))])
    assert learning_rate(_cfg(**{"optimizer.params.scale_lr": True}), 16) == pytest.approx(16e-3)
    with pytest.raises(ConfigError, match="lr_scheduler.scheduler 'linear' is not supported"):
        make_scheduler(opt, _cfg(**{"lr_scheduler.scheduler": "linear"}), 3)
    with pytest.raises(ConfigError, match="optimizer.name 'sgd' is not supported"):
        make_optimizer(model, _cfg(**{"optimizer.name": "sgd"}), 1e-3)

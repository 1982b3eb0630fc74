"""The DDO settings (reduction, gradient scale, EMA reference) and the per-step diagnostics (discriminator
accuracy, the DDO share of the gradient), on hand-checkable inputs; defaults keep the shipped loss."""
import copy

import pytest
import torch

from t3d.common.config import ConfigError, load_config
from t3d.train import losses
from t3d.train.objectives import T3DSettings, ema_update, t3d_micro_step
from t3d.train.self_ddo import check_config

from test_losses import _tiny_batch


# --------------------------------------------------------------------------------------- loss helpers
def test_masked_sum_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    assert losses.masked_sum(values, mask).tolist() == [4.0, 0.0]
    assert losses.masked_mean(values, mask).tolist() == [2.0, 0.0]


def test_discriminator_accuracy_by_hand():
    # real right when > 0 (0.5), fake right when < 0 (-1.0); a zero margin is wrong: 2 right of 5
    real, fake = torch.tensor([0.5, -0.1, 0.0]), torch.tensor([-1.0, 0.2])
    assert losses.discriminator_accuracy(real, fake).item() == pytest.approx(0.4)
    assert losses.discriminator_accuracy(torch.zeros(3), torch.zeros(3)).item() == 0.0


def test_scale_grad_keeps_the_value_and_scales_the_gradient():
    x = torch.tensor(2.0, requires_grad=True)
    y = losses.scale_grad(x ** 2, 0.5)
    assert y.item() == 4.0
    y.backward()
    assert x.grad.item() == 2.0  # 0.5 * d(x^2)/dx = 0.5 * 4


def test_gradient_share_by_hand():
    x = torch.ones(4, requires_grad=True)
    # d(3 sum x)/dx = 3 per entry: norm 6; d(4 sum x)/dx: norm 8 -> 6 / 14
    assert losses.gradient_share(3 * x.sum(), 4 * x.sum(), [x]).item() == pytest.approx(3 / 7)
    assert losses.gradient_share(0 * x.sum(), 0 * x.sum(), [x]).item() == 0.0
    assert losses.gradient_share(x.sum(), 0 * x.sum(), [x]).item() == 1.0
    assert x.grad is None  # no gradient was accumulated: the training backward is untouched


def test_ema_update_once_per_parameter_change():
    ref, model = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        ref.weight.zero_()
        model.weight.fill_(1.0)
    state = {}
    assert ema_update(ref, model, 0.9, state)
    assert ref.weight.tolist() == [[pytest.approx(0.1), pytest.approx(0.1)]]
    assert not ema_update(ref, model, 0.9, state)  # the same parameters (next micro-batch): no second move
    with torch.no_grad():
        model.weight.add_(1.0)  # an optimizer step: weight 2
    assert ema_update(ref, model, 0.9, state)
    assert ref.weight[0, 0].item() == pytest.approx(0.1 + 0.1 * (2 - 0.1))
    same = copy.deepcopy(model)
    ema_update(same, model, 0.3, {})
    assert torch.equal(same.weight, model.weight)  # reference == target stays exactly put


# ------------------------------------------------------------------------------------------ the objective
def _settings(tokenizer, **kw):
    return T3DSettings(seed=0, block_size=4, mask_id=tokenizer.mask_token_id, vocab_ids=torch.arange(10, 200),
                       mask_ratios=(1.0,), random_ratio=0.0, **kw)


def _perturbed(base):
    model = copy.deepcopy(base).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return model


def test_defaults_are_the_shipped_settings():
    s = T3DSettings(seed=0, block_size=4, mask_id=0, vocab_ids=torch.arange(3))
    assert (s.ddo_reduction, s.ddo_grad_scale, s.reference_update, s.exact_grad_share) == ("mean", 1.0, "rounds", False)


def test_sum_reduction_is_the_mean_times_the_masked_count(tiny):
    """Every response token masked (ratio 1, 9 tokens per row): the sum of the log-ratios is 9 x their mean, so
    DDO with sum at beta equals DDO with mean at 9 beta."""
    base, tokenizer = tiny
    batch, ref, model = _tiny_batch(tokenizer), copy.deepcopy(base).eval(), _perturbed(base)
    with torch.no_grad():
        _, summed = t3d_micro_step(model, ref, batch, 0, _settings(tokenizer, beta=0.1, ddo_reduction="sum"))
        _, meaned = t3d_micro_step(model, ref, batch, 0, _settings(tokenizer, beta=0.9))
    assert summed["ddo_real"].item() == pytest.approx(meaned["ddo_real"].item(), rel=1e-5)
    assert summed["ddo_fake"].item() == pytest.approx(meaned["ddo_fake"].item(), rel=1e-5)
    assert summed["path"].item() == meaned["path"].item()  # the path loss does not depend on the reduction


def test_diagnostics_at_the_start_and_the_share_limits(tiny):
    base, tokenizer = tiny
    batch, ref = _tiny_batch(tokenizer), copy.deepcopy(base).eval()
    model = copy.deepcopy(base).train()
    loss, parts = t3d_micro_step(model, ref, batch, 0, _settings(tokenizer))
    assert parts["disc_acc"].item() == 0.0  # target == reference: every margin is exactly 0
    assert 0 < parts["ddo_grad_share"].item() < 1
    _, only_ddo = t3d_micro_step(model, ref, batch, 0, _settings(tokenizer, lambda_path=0.0, exact_grad_share=True))
    assert only_ddo["ddo_grad_share"].item() == 1.0 and only_ddo["ddo_grad_share_exact"].item() == 1.0
    _, only_path = t3d_micro_step(model, ref, batch, 0, _settings(tokenizer, lambda_ddo=0.0))
    assert only_path["ddo_grad_share"].item() == 0.0
    assert all(p.grad is None for p in model.parameters())  # diagnostics never accumulate gradients
    moved = _perturbed(base)
    _, parts = t3d_micro_step(moved, ref, batch, 0, _settings(tokenizer))
    assert 0 <= parts["disc_acc"].item() <= 1 and parts["disc_acc"].item() * 8 == round(parts["disc_acc"].item() * 8)


def test_ddo_grad_scale_scales_only_the_gradient(tiny):
    base, tokenizer = tiny
    batch, ref = _tiny_batch(tokenizer), copy.deepcopy(base).eval()
    grads = {}
    for scale in (1.0, 0.5):
        model = _perturbed(base)
        loss, _ = t3d_micro_step(model, ref, batch, 0, _settings(tokenizer, lambda_path=0.0, ddo_grad_scale=scale))
        loss.backward()
        grads[scale] = (loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0.5][0] == grads[1.0][0]  # the logged loss is the same
    assert torch.allclose(grads[0.5][1], 0.5 * grads[1.0][1], rtol=1e-5, atol=1e-9)


def test_ema_reference_moves_inside_the_micro_step(tiny):
    base, tokenizer = tiny
    batch, ref, model = _tiny_batch(tokenizer), copy.deepcopy(base).eval(), _perturbed(base)
    before = [p.detach().clone() for p in ref.parameters()]
    s = _settings(tokenizer, reference_update="ema", ema_decay=0.75)
    with torch.no_grad():
        t3d_micro_step(model, ref, batch, 0, s)
    for b, r, m in zip(before, ref.parameters(), model.parameters()):
        assert torch.allclose(r, 0.75 * b + 0.25 * m, atol=1e-7)


def test_check_config_refuses_bad_settings():
    def cfg(*overrides):
        return load_config(["config=configs/t3d_tiny.yaml", *overrides])

    check_config(cfg())  # the shipped values pass
    check_config(cfg("training.reference_update=ema", "training.ddo_reduction=sum"))
    for bad, match in ((("training.ddo_reduction=max",), "ddo_reduction"),
                       (("training.reference_update=swa",), "reference_update"),
                       (("training.reference_update=ema", "training.ema_decay=1.0"), "ema_decay"),
                       (("training.reference_update=ema", "model.lora.r=4"), "lora"),
                       (("training.ddo_grad_scale=-1",), "ddo_grad_scale")):
        with pytest.raises(ConfigError, match=match):
            check_config(cfg(*bad))

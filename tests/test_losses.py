"""DDO, path loss and SFT CE on hand-checkable tensors; the DDO gradient moves the model the right way."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from t3d.train import losses
from t3d.train.objectives import T3DSettings, noisy_logits, t3d_micro_step


def _logsig(x):
    return -math.log1p(math.exp(-x))


def test_ddo_loss_equals_hand_computation():
    lp_real, ref_real = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    lp_fake, ref_fake = torch.tensor([-0.5, -3.0]), torch.tensor([-1.0, -2.0])
    alpha, beta = 0.5, 0.1
    loss, real, fake = losses.ddo_loss(lp_real, ref_real, lp_fake, ref_fake, alpha, beta)
    want_real = -(_logsig(0.1 * 0.5) + _logsig(0.1 * -1.0)) / 2
    want_fake = -(math.log(1 - 1 / (1 + math.exp(-0.1 * 0.5))) + math.log(1 - 1 / (1 + math.exp(-0.1 * -1.0)))) / 2
    assert real.item() == pytest.approx(want_real, rel=1e-6)
    assert fake.item() == pytest.approx(want_fake, rel=1e-6)
    assert loss.item() == pytest.approx(want_real + alpha * want_fake, rel=1e-6)
    # equal models: log 2 for each term
    loss, real, fake = losses.ddo_loss(ref_real, ref_real, ref_fake, ref_fake, alpha, beta)
    assert (real.item(), fake.item()) == pytest.approx((math.log(2), math.log(2)))
    # stays finite for huge margins (logsigmoid form)
    big = losses.ddo_loss(torch.tensor([0.0]), torch.tensor([-1e5]), torch.tensor([0.0]), torch.tensor([-1e5]), 1, 1)[0]
    assert torch.isfinite(big)


def test_masked_mean_and_token_logp():
    logp = torch.log_softmax(torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]]), -1)
    tok = losses.token_logp(logp, torch.tensor([[2, 0]]))
    assert tok[0].tolist() == pytest.approx([3 - math.log(math.e + math.e**2 + math.e**3), -math.log(3)])
    values = torch.tensor([[1.0, 2.0, 4.0], [5.0, 6.0, 7.0]])
    mean = losses.masked_mean(values, torch.tensor([[1, 0, 1], [0, 0, 0]]).bool())
    assert mean.tolist() == [2.5, 0.0]


def test_path_loss_equals_hand_computation():
    # one block of 4, decoding ranks [2, 0, 3, 1], k = 2 -> levels {ranks 0,1} and {all}
    nll = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    rank = torch.tensor([[2, 0, 3, 1]])
    real = torch.ones(1, 4, dtype=torch.bool)
    assert losses.path_loss(nll, rank, real, 2, 4).item() == pytest.approx(((2 + 4) / 2 + 2.5) / 2)
    # k = 4: a single level = plain mean
    assert losses.path_loss(nll, rank, real, 4, 4).item() == pytest.approx(2.5)
    # pooled over the batch; non-real positions (post pads) excluded; k = 3 -> levels ranks<3, ranks<6
    nll2 = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    rank2 = torch.tensor([[2, 0, 3, 1], [0, 1, 2, 3]])
    real2 = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool()
    level0 = (1 + 2 + 4 + 10 + 20) / 5
    level1 = (1 + 2 + 3 + 4 + 10 + 20) / 6
    assert losses.path_loss(nll2, rank2, real2, 3, 4).item() == pytest.approx((level0 + level1) / 2)
    # levels with no token are skipped; no token at all -> 0 with a graph
    only_late = torch.tensor([[0, 0, 0, 0]]).bool()
    out = losses.path_loss(nll.requires_grad_(), rank, only_late, 2, 4)
    assert out.item() == 0.0 and out.requires_grad


def test_fake_tokens_argmax_and_single_sample():
    logits = torch.tensor([[[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]]])
    assert losses.fake_tokens(logits, 0.0).tolist() == [[1, 0]]
    # inverse CDF: u=0 picks the first token, u->1 the last with mass
    assert losses.fake_tokens(logits, 1.0, torch.zeros(1, 2)).tolist() == [[0, 0]]
    assert losses.fake_tokens(logits, 1.0, torch.full((1, 2), 0.999999)).tolist() == [[2, 2]]
    # frequencies follow softmax(logits / T)
    many = torch.tensor([[0.0, 1.0, 2.0]]).expand(20000, 1, 3)
    u = torch.rand(20000, 1, generator=torch.Generator().manual_seed(0))
    draws = losses.fake_tokens(many, 0.5, u).flatten()
    freq = torch.bincount(draws, minlength=3).double() / 20000
    assert freq.tolist() == pytest.approx(torch.softmax(torch.tensor([0.0, 2.0, 4.0]), 0).tolist(), abs=0.01)


def test_masked_ce_matches_cross_entropy_on_masked_positions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    targets = torch.randint(0, 7, (2, 5), generator=g)
    masked = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 1, 0]]).bool()
    want = F.cross_entropy(logits[masked], targets[masked])
    target_logp = losses.token_logp(torch.log_softmax(logits, -1), targets)
    assert losses.masked_ce(target_logp, masked).item() == pytest.approx(want.item(), rel=1e-6)
    # hand-checked: mean of -log p over the masked positions only; nothing masked -> 0
    logp = torch.tensor([[-1.0, -2.0, -4.0]])
    assert losses.masked_ce(logp, torch.tensor([[True, False, True]])).item() == 2.5
    assert losses.masked_ce(logp, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0


def _tiny_batch(tokenizer, n=4, length=9, prompt_len=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "index": torch.arange(n),
        "prompt_ids": torch.randint(10, 200, (n, prompt_len), generator=g),
        "prompt_len": torch.full((n,), prompt_len),
        "response_ids": torch.randint(10, 200, (n, length), generator=g),
        "response_len": torch.full((n,), length),
        "real_len": torch.full((n,), length),
        "step_map": torch.stack([torch.randperm(length, generator=g) + 1 for _ in range(n)]),
    }


def test_ddo_gradient_raises_real_and_lowers_fake_relative_to_reference(tiny):
    base, tokenizer = tiny
    model, ref = copy.deepcopy(base).train(), copy.deepcopy(base).eval()
    batch = _tiny_batch(tokenizer)
    s = T3DSettings(seed=0, block_size=4, mask_id=tokenizer.mask_token_id, vocab_ids=torch.arange(10, 200),
                    mask_ratios=(1.0,), random_ratio=0.0, alpha=0.5, beta=1.0, lambda_path=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss, parts = t3d_micro_step(model, ref, batch, 0, s)
    assert parts["ddo_real"].item() == pytest.approx(math.log(2), abs=1e-5)  # target == reference at the start
    loss.backward()
    opt.step()

    def seq_logp(m, tokens):
        noisy = batch["response_ids"].new_full(batch["response_ids"].shape, tokenizer.mask_token_id)
        with torch.no_grad():
            logp = torch.log_softmax(noisy_logits(m, batch, noisy, 4).float(), -1)
        return losses.token_logp(logp, tokens).mean(1)

    with torch.no_grad():
        noisy = torch.full_like(batch["response_ids"], tokenizer.mask_token_id)
        fake = noisy_logits(ref, batch, noisy, 4).argmax(-1)
    real = batch["response_ids"]
    assert (seq_logp(model, real) > seq_logp(ref, real)).all()
    assert (seq_logp(model, fake) < seq_logp(ref, fake)).all()


def test_lambda_ddo_weighs_the_ddo_term(tiny):
    """lambda_ddo = 1 is the shipped loss (ddo + lambda_path * path); 0 leaves exactly lambda_path * path."""
    base, tokenizer = tiny
    batch = _tiny_batch(tokenizer)
    ref = copy.deepcopy(base).eval()
    model = copy.deepcopy(base).train()
    with torch.no_grad():  # target != reference, so the DDO term is not a constant
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))

    def step(**kw):
        s = T3DSettings(seed=0, block_size=4, mask_id=tokenizer.mask_token_id, vocab_ids=torch.arange(10, 200), **kw)
        with torch.no_grad():
            return t3d_micro_step(model, ref, batch, 0, s)

    assert T3DSettings(seed=0, block_size=4, mask_id=0, vocab_ids=torch.arange(3)).lambda_ddo == 1.0
    ddo, _ = step(lambda_path=0.0)
    full, parts = step(lambda_path=0.2)
    assert full.item() == (ddo + 0.2 * parts["path"]).item()
    assert step(lambda_path=0.2, lambda_ddo=1.0)[0].item() == full.item()
    path_only, parts0 = step(lambda_path=0.2, lambda_ddo=0.0)
    assert path_only.item() == (0.2 * parts0["path"]).item() and parts0["path"].item() == parts["path"].item()
    assert ddo.item() > 0.5 and path_only.item() != full.item()

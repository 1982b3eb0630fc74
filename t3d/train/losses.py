"""T3D objective: DDO on trajectory states plus the step-map path loss; masked CE for SFT.

Notation (the original T3D code's): l_m(y) = mean over masked positions of log p_m(y_i | x_t) per sample (or, with
training.ddo_reduction=sum, the sum: the sequence log-likelihood of the masked tokens);
    L = mean[-log s(b(l_th(y_real) - l_ref(y_real)))] + a * mean[-log(1 - s(b(l_th(y_fake) - l_ref(y_fake))))]
with y_real the rollout tokens and y_fake the reference's prediction from the same noisy input.
"""
import math

import torch
import torch.nn.functional as F


def token_logp(logp, tokens):
    """log-probabilities [b, L, V] -> log p(tokens) [b, L]."""
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def masked_mean(values, mask):
    """Per-row mean of values [b, L] over mask [b, L] -> [b] (rows without a masked position give 0)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(1) / mask.sum(1).clamp(min=1)


def masked_sum(values, mask):
    """Per-row sum of values [b, L] over mask [b, L] -> [b]."""
    return (values * mask.to(values.dtype)).sum(1)


def discriminator_accuracy(real_margin, fake_margin):
    """Share of samples the implicit discriminator gets right: real ones with a positive margin
    b(l_th - l_ref), fake ones with a negative margin. A zero margin (target == reference) counts as wrong."""
    right = (real_margin > 0).sum() + (fake_margin < 0).sum()
    return right.float() / max(real_margin.numel() + fake_margin.numel(), 1)


def scale_grad(value, scale):
    """`value` unchanged, its gradient multiplied by `scale` (value - value.detach() is exactly 0)."""
    return value.detach() + scale * (value - value.detach())


def gradient_share(first, second, inputs):
    """||d first / d inputs|| / (||d first / d inputs|| + ||d second / d inputs||): the share of the two terms'
    gradient norm that comes from `first` (0 when both gradients vanish). The graph is kept for the backward."""
    def norm(term):
        if not term.requires_grad:
            return torch.zeros((), device=term.device)
        grads = [g for g in torch.autograd.grad(term, inputs, retain_graph=True, allow_unused=True) if g is not None]
        if not grads:
            return torch.zeros((), device=term.device)
        return torch.sqrt(sum((g.float() ** 2).sum() for g in grads))

    a, b = norm(first), norm(second)
    total = a + b
    return torch.where(total > 0, a / total.clamp(min=torch.finfo(total.dtype).tiny), torch.zeros_like(a))


def fake_tokens(ref_logits, temperature, u=None):
    """The reference's prediction: argmax if temperature == 0, else ONE sample from
    softmax(logits / temperature) by inverse CDF on the uniforms u [b, L] (the same sample then serves
    both the target's and the reference's log-probability)."""
    if temperature == 0:
        return ref_logits.argmax(-1)
    probs = torch.softmax(ref_logits.float() / temperature, -1)
    cdf = probs.cumsum(-1)
    target = (u.to(cdf.dtype) * cdf[..., -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=ref_logits.shape[-1] - 1)


def ddo_loss(logp_real, ref_logp_real, logp_fake, ref_logp_fake, alpha, beta):
    """Per-sample sequence log-probs [b] -> (loss, real term, fake term), each a scalar.

    -log(1 - sigmoid(z)) = -logsigmoid(-z): both terms stay finite for any margin.
    """
    real = -F.logsigmoid(beta * (logp_real - ref_logp_real)).mean()
    fake = -F.logsigmoid(-beta * (logp_fake - ref_logp_fake)).mean()
    return real + alpha * fake, real, fake


def path_loss(nll, rank, real, k_steps, block_size):
    """Step-map path loss, per position nll [b, L] = -log p_th(rollout token | x_t).

    Level s (s = 0 .. ceil(B/k)-1) holds the real response tokens whose within-block decoding rank is
    < (s+1)*k, i.e. the tokens decoded in the first s+1 "large steps" of k tokens. The loss is the mean,
    over non-empty levels, of the mean nll over the level's tokens (pooled over the batch).
    """
    n_levels = math.ceil(block_size / k_steps)
    bounds = torch.arange(1, n_levels + 1, device=nll.device)[:, None, None] * k_steps
    in_level = (rank[None] < bounds) & real[None]  # [S, b, L]
    counts = in_level.flatten(1).sum(1)
    sums = (nll[None] * in_level).flatten(1).sum(1)
    nonempty = counts > 0
    if not nonempty.any():
        return nll.sum() * 0.0
    return (sums[nonempty] / counts[nonempty]).mean()


def masked_ce(target_logp, masked):
    """Mean cross-entropy over the masked positions of the whole micro-batch (SFT objective), from
    log p(target) [b, L] (`t3d.train.token_logprobs`)."""
    return (-target_logp * masked).sum() / masked.sum().clamp(min=1)

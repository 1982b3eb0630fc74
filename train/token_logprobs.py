"""Log-probabilities of a few tokens per position straight from the LM head, a chunk of positions at a time.

The T3D and SFT objectives need, per position, log p of one or two tokens (and, from the reference, its argmax
or one sample), never the whole distribution. Holding `log_softmax(logits.float())` for [b, L, V] costs
~3 full-vocabulary fp32 copies per token in a training step (logits, log-probs, their gradients). Here the
LM head runs on `chunk` positions at a time (`chunk_positions`: one chunk of fp32 logits fits a byte budget),
each chunk is reduced to the needed numbers, and its logits are dropped:

* with gradients, each chunk runs under non-reentrant `torch.utils.checkpoint`, so backward recomputes that
  chunk's logits through the `lm_head` module (which keeps DeepSpeed ZeRO-3's parameter gathering and DDP's
  hooks working) instead of storing them: one extra head matmul per position buys O(chunk x V) memory;
* the arithmetic per chunk is the full-tensor code's, `log_softmax(logits.float()).gather(...)` and its
  autograd backward (row-wise kernels), so log-probabilities are fp32 whatever the model dtype and agree
  with the full-tensor values bit for bit whenever the head's matmul does.

`chunked_head` is passed to `SDARForCausalLM.forward` as `head_fn` (see `train.objectives`).
"""
import torch
from torch.utils.checkpoint import checkpoint

from train.losses import fake_tokens

LOGITS_BUDGET_BYTES = 32 * 2**20  # one chunk of fp32 logits: 55 positions at V = 151,936


def chunk_positions(vocab_size, budget_bytes=LOGITS_BUDGET_BYTES):
    """Positions per chunk such that one chunk of fp32 logits [n, V] fits `budget_bytes` (at least 1)."""
    return max(1, int(budget_bytes) // (int(vocab_size) * 4))


def chunked_head(per_chunk, budget_bytes=LOGITS_BUDGET_BYTES):
    """A `head_fn` for `SDARForCausalLM.forward`: hidden [b, n, H], lm_head -> per-position outputs [b, n, ...].

    `per_chunk(logits [c, V], rows)` maps the logits of flat positions `rows` (a slice of range(b * n)) to a
    tensor or tuple of tensors with c rows; the chunks' outputs are concatenated in order."""

    def head_fn(hidden, lm_head):
        b, n = hidden.shape[:2]
        flat = hidden.reshape(b * n, hidden.shape[-1])
        chunk = chunk_positions(lm_head.out_features, budget_bytes)

        def run(h, rows):
            return per_chunk(lm_head(h), rows)

        pieces = []
        for start in range(0, b * n, chunk):
            rows = slice(start, min(start + chunk, b * n))
            if torch.is_grad_enabled():
                pieces.append(checkpoint(run, flat[rows], rows, use_reentrant=False))
            else:
                pieces.append(run(flat[rows], rows))
        if isinstance(pieces[0], tuple):
            return tuple(torch.cat(p).reshape(b, n, *p[0].shape[1:]) for p in zip(*pieces))
        return torch.cat(pieces).reshape(b, n, *pieces[0].shape[1:])

    return head_fn


def token_logprobs(tokens, budget_bytes=LOGITS_BUDGET_BYTES):
    """head_fn -> log p(tokens) [b, n, k] fp32, differentiable; tokens [b, n, k] for the kept positions."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    return chunked_head(lambda logits, rows: torch.log_softmax(logits.float(), -1).gather(-1, flat[rows]), budget_bytes)


def reference_choice(real, temperature, u, budget_bytes=LOGITS_BUDGET_BYTES):
    """head_fn for the (no-grad) reference -> (fake [b, n], log p([real, fake]) [b, n, 2] fp32).

    fake = `losses.fake_tokens` per chunk: argmax at temperature 0, else one inverse-CDF sample on the same
    uniforms u [b, n] (row-wise, so a chunk's choice equals the full tensor's)."""
    flat_real, flat_u = real.reshape(-1), None if u is None else u.reshape(-1)

    def per_chunk(logits, rows):
        fake = fake_tokens(logits, temperature, None if flat_u is None else flat_u[rows])
        logp = torch.log_softmax(logits.float(), -1)
        return fake, logp.gather(-1, torch.stack([flat_real[rows], fake], -1))

    return chunked_head(per_chunk, budget_bytes)

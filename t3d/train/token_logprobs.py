"""Log-probabilities of a few tokens per position straight from the LM head, never the whole [b, L, V].

The T3D and SFT objectives need, per position, log p of one or two tokens (and, from the reference, its argmax
or one sample), never the whole distribution. Holding `log_softmax(logits.float())` for [b, L, V] costs
~3 full-vocabulary fp32 copies per token in a training step (logits, log-probs, their gradients). Here:

* forward runs the head on `chunk_positions` positions at a time (one chunk of fp32 logits fits a byte
  budget) and keeps only the gathered log-probs and one log-normaliser per position. Per chunk it is the
  full-tensor arithmetic, `log_softmax(linear(h, W).float()).gather(...)` (row-wise kernels), so values are
  fp32 whatever the model dtype and equal the full-tensor ones whenever the matmul rounds alike;
* backward (`_LinearTokenLogProbs`) recomputes the logits a slice of the VOCABULARY at a time for all
  positions: d/dlogits = onehot(tokens) g - softmax * sum(g), then the hidden-state gradient is summed over
  the slices and the weight gradient is written slice by slice (matmul straight into the rows, no per-slice
  product) -- the same matmul shapes as the full-tensor backward, one extra forward matmul, no [N, V] buffer;
* the weight gradient needs no [V, H] buffer of its own when `weight.grad` is already allocated (DDP and
  DeepSpeed keep it between steps, and `zero_grad(set_to_none=False)`) and this backward is the one that
  accumulates into it (`loss.backward()`, not `torch.autograd.grad`): the slices are added into `.grad` in
  place, which is what autograd's accumulation would do with a returned buffer, less the buffer. A tied
  embedding then brings only its own dense gradient (`_grad_to_accumulate_into`);
* the head runs as the `lm_head` module's forward (`_as_forward`), so module hooks fire around it: DeepSpeed
  ZeRO-3 gathers the partitioned weight before forward and again before backward; DDP and ZeRO-1/2 see an
  ordinary gradient on the weight (tied or not).

The functions return `head_fn`s for `SDARForCausalLM.forward` (see `t3d.train.objectives`).
"""
import torch
import torch.nn.functional as F

from t3d.train.losses import fake_tokens

LOGITS_BUDGET_BYTES = 32 * 2**20  # one chunk of fp32 logits: 55 positions at V = 151,936


def chunk_positions(vocab_size, budget_bytes=LOGITS_BUDGET_BYTES):
    """Rows per chunk such that one chunk of fp32 logits [rows, vocab_size] fits `budget_bytes` (at least 1)."""
    return max(1, int(budget_bytes) // (int(vocab_size) * 4))


def _chunks(n, size):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _as_forward(module, fn, *args):
    """module(*args) with `fn` as its forward, so the module's hooks run around fn."""
    module.forward = fn
    try:
        return module(*args)
    finally:
        del module.forward


class _LinearTokenLogProbs(torch.autograd.Function):
    """hidden [N, H], weight [V, H], tokens [N, k] -> log_softmax(linear(hidden, weight).float()).gather(-1, tokens)."""

    @staticmethod
    def forward(ctx, hidden, weight, tokens, budget_bytes):
        out = torch.empty(tokens.shape, dtype=torch.float32, device=hidden.device)
        log_norm = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for rows in _chunks(hidden.shape[0], chunk_positions(weight.shape[0], budget_bytes)):
            logits = F.linear(hidden[rows], weight)  # under autocast: the autocast dtype, as lm_head would
            x = logits.float()
            logp = torch.log_softmax(x, -1)
            out[rows] = logp.gather(-1, tokens[rows])
            top, arg = x.max(-1, keepdim=True)
            log_norm[rows] = (top - logp.gather(-1, arg)).squeeze(-1)  # = max + log sum exp(x - max)
            ctx.logits_dtype = logits.dtype
            del logits, x, logp  # else they live on while the next chunk's are made: two chunks at the peak
        ctx.save_for_backward(hidden, weight, tokens, log_norm)
        ctx.budget_bytes = budget_bytes
        return out

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, tokens, log_norm = ctx.saved_tensors
        dtype = ctx.logits_dtype  # autocast is off in backward: cast as it cast in forward
        h = hidden.to(dtype)
        grad_sum = grad.sum(-1, keepdim=True)
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        param_grad = _grad_to_accumulate_into(ctx, weight) if ctx.needs_input_grad[1] else None
        grad_w = param_grad
        if grad_w is None and ctx.needs_input_grad[1]:
            grad_w = torch.empty_like(weight)  # autograd takes it over as .grad when there is none yet
        for cols in _chunks(weight.shape[0], chunk_positions(hidden.shape[0], ctx.budget_bytes)):
            w = weight[cols].to(dtype)
            grad_logits = F.linear(h, w).float().sub_(log_norm[:, None]).exp_().mul_(grad_sum).neg_()
            inside = (tokens >= cols.start) & (tokens < cols.stop)  # tokens in this slice get + g
            grad_logits.scatter_add_(-1, (tokens - cols.start).clamp_(0, cols.stop - cols.start - 1), grad * inside)
            grad_logits = grad_logits.to(dtype)
            _matmul_into(grad_h, grad_logits, w, accumulate=True)
            if grad_w is not None:
                _matmul_into(grad_w[cols], grad_logits.T, h, accumulate=param_grad is not None)
            del grad_logits  # one slice's buffer at a time
        if param_grad is None:
            return grad_h.to(hidden.dtype), grad_w, None, None
        # Already in .grad. None lets a tied embedding's gradient arrive alone (no [V, H] sum with ours);
        # with post-accumulate hooks (e.g. DeepSpeed's) a broadcast zero makes sure autograd's accumulation
        # runs and fires them on every torch version.
        hooks = getattr(weight, "_post_accumulate_grad_hooks", None)
        return grad_h.to(hidden.dtype), weight.new_zeros(()).expand(weight.shape) if hooks else None, None, None


def _matmul_into(out, a, b, accumulate):
    """out = a @ b, or out += a @ b, without a separate product tensor where the dtypes allow it (under
    autocast a is the low-precision product input and out fp32: then one [rows, cols] product, as before)."""
    if a.dtype == out.dtype:
        if accumulate:
            out.addmm_(a, b)
        else:
            torch.mm(a, b, out=out)
    elif accumulate:
        out += a @ b
    else:
        out.copy_(a @ b)


def _grad_to_accumulate_into(ctx, weight):
    """weight.grad when this backward may add the weight gradient into it in place, else None.

    Only where autograd would itself add ours into that very tensor in place: the weight is a leaf whose
    accumulator runs in this backward (not `torch.autograd.grad`, which captures the gradient and leaves
    .grad alone, nor `backward(inputs=...)` without it), no double backward, and .grad is a plain dense
    tensor of the weight's shape and dtype. ZeRO-3 partitions, FSDP views or a missing .grad take the buffer."""
    if torch.is_grad_enabled():  # create_graph=True: autograd accumulates out of place
        return None
    node = ctx.next_functions[1][0]
    if type(node).__name__ != "AccumulateGrad" or node.variable is not weight:
        return None
    grad = weight.grad
    if (grad is None or grad.requires_grad or grad.layout != torch.strided or not grad.is_contiguous()
            or grad.shape != weight.shape or grad.dtype != weight.dtype or grad.device != weight.device):
        return None
    will_run = getattr(torch._C, "_will_engine_execute_node", None)
    if will_run is None:
        return None
    try:
        return grad if will_run(node) else None
    except RuntimeError:  # raised for a leaf inside torch.autograd.grad: the gradient is captured, not stored
        return None


def token_logprobs(tokens, budget_bytes=LOGITS_BUDGET_BYTES):
    """head_fn -> log p(tokens) [b, n, k] fp32, differentiable; tokens [b, n, k] for the kept positions."""

    def head_fn(hidden, lm_head):
        if lm_head.bias is not None:
            raise ValueError("token_logprobs: an LM head with a bias is not supported (SDAR's has none)")
        b, n, width = hidden.shape
        flat, flat_tokens = hidden.reshape(b * n, width), tokens.reshape(b * n, -1)
        logp = _as_forward(lm_head, lambda h: _LinearTokenLogProbs.apply(h, lm_head.weight, flat_tokens, budget_bytes),
                           flat)
        return logp.reshape(b, n, -1)

    return head_fn


def reference_choice(real, temperature, u, budget_bytes=LOGITS_BUDGET_BYTES):
    """head_fn for the reference (no grad) -> (fake [b, n], log p([real, fake]) [b, n, 2] fp32).

    fake = `losses.fake_tokens` per chunk of positions: argmax at temperature 0, else one inverse-CDF sample on
    the same uniforms u [b, n] (row-wise, so a chunk's choice equals the full tensor's)."""
    flat_real, flat_u = real.reshape(-1), None if u is None else u.reshape(-1)

    @torch.no_grad()
    def head_fn(hidden, lm_head):
        b, n, width = hidden.shape
        flat = hidden.reshape(b * n, width)
        fake = torch.empty(b * n, dtype=torch.long, device=hidden.device)
        logp = torch.empty(b * n, 2, dtype=torch.float32, device=hidden.device)
        for rows in _chunks(b * n, chunk_positions(lm_head.out_features, budget_bytes)):
            logits = lm_head(flat[rows])
            fake[rows] = fake_tokens(logits, temperature, None if flat_u is None else flat_u[rows])
            both = torch.stack([flat_real[rows], fake[rows]], -1)
            logp[rows] = torch.log_softmax(logits.float(), -1).gather(-1, both)
            del logits  # one chunk's logits at a time
        return fake.reshape(b, n), logp.reshape(b, n, 2)

    return head_fn

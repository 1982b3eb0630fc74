"""The chunked-head objectives equal the full-logits ones (kept here as the oracle) in loss and every gradient."""
import copy
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks.bench_loss_memory import full_logits_sft_loss, full_logits_t3d_micro_step  # the oracle
from t3d.model.sdar import SDARConfig, SDARForCausalLM
from t3d.train import losses
from t3d.train import token_logprobs as tlp
from t3d.train.objectives import T3DSettings, sft_micro_step, t3d_micro_step


# ------------------------------------------------------------------ helpers

@pytest.fixture(autouse=True)
def one_thread():
    """Exact comparisons in one thread: with several, BLAS may split the head's vocabulary-long reduction
    (grad of the hidden states) differently for a chunk than for the whole matrix (measured 3e-6 relative
    with 2 threads at V = 151,936) -- a rounding difference, not a different computation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_model(vocab, hidden=32, layers=1, tie=False, seed=0):
    config = SDARConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                        tie_word_embeddings=tie, pad_token_id=0, mask_token_id=vocab - 1, block_size=4)
    torch.manual_seed(seed)
    model = SDARForCausalLM(config)
    with torch.no_grad():  # a spread-out distribution: log-probs far from uniform, samples far from argmax
        model.lm_head.weight.normal_(0, 0.5)
    return model


def batch_of(vocab, n=3, prompt=5, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    real_len = torch.tensor([length, length - 3, length - 1])[:n]
    return {
        "index": torch.arange(n) + 7,
        "prompt_ids": torch.randint(1, vocab - 1, (n, prompt), generator=g),
        "prompt_len": torch.tensor([prompt, prompt - 2, prompt - 1])[:n],
        "response_ids": torch.randint(1, vocab - 1, (n, length), generator=g),
        "response_len": torch.full((n,), length),
        "real_len": real_len,
        "step_map": torch.stack([torch.randperm(length, generator=g) + 1 for _ in range(n)]),
    }


def settings(vocab, budget_positions, **kw):
    return T3DSettings(seed=3, block_size=4, mask_id=vocab - 1, vocab_ids=torch.arange(1, vocab - 1),
                       mask_ratios=(1.0, 0.5), mask_ratio_exponent=1.0, random_ratio=0.2, path_k_steps=2,
                       logits_budget_bytes=budget_positions * vocab * 4, **kw)


def loss_and_grads(step, model):
    model.zero_grad(set_to_none=True)
    loss, parts = step(model)
    loss.backward()
    return {k: v.item() for k, v in parts.items() if k in ("loss", "ddo_real", "ddo_fake", "path")}, \
        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(new, old, tol):
    """Parts within tol; each gradient within tol x max(1, its largest entry): chunks sum the head's gradient
    in another order, and fp32 resolves only ~6e-8 of an entry's magnitude."""
    (parts_new, grads_new), (parts_old, grads_old) = new, old
    for k in parts_old:
        assert parts_new[k] == pytest.approx(parts_old[k], abs=tol, rel=0), k
    assert grads_new.keys() == grads_old.keys()
    for n in grads_old:
        scale = max(1.0, grads_old[n].abs().max().item())
        assert (grads_new[n] - grads_old[n]).abs().max().item() <= tol * scale, n


# ------------------------------------------------------------------ unit behaviour

def test_chunk_positions_from_budget():
    assert tlp.chunk_positions(151936, 32 * 2**20) == 55  # 55 * 151936 * 4 = 31.9 MiB
    assert tlp.chunk_positions(448, 448 * 4 * 7) == 7
    assert tlp.chunk_positions(448, 448 * 4 * 7 + 1) == 7
    assert tlp.chunk_positions(151936, 1) == 1  # never zero


def test_token_logprobs_hand_checked_and_gradient_matches_log_softmax():
    head = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    hidden = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]], requires_grad=True)  # logits [1, 2, 3], [0, 0, 0]
    tokens = torch.tensor([[[2, 0], [1, 1]]])
    out = tlp.token_logprobs(tokens, budget_bytes=3 * 4)(hidden, head)  # one position per chunk
    lse = math.log(math.e + math.e**2 + math.e**3)
    assert out.flatten().tolist() == pytest.approx([3 - lse, 1 - lse, -math.log(3), -math.log(3)], abs=1e-6)
    weights = torch.tensor([[[1.0, -2.0], [0.5, 3.0]]])
    (out * weights).sum().backward()
    grad_h, grad_w = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    oracle = torch.log_softmax(head(hidden).float(), -1).gather(-1, tokens)
    (oracle * weights).sum().backward()
    assert torch.allclose(grad_h, hidden.grad, atol=1e-6) and torch.allclose(grad_w, head.weight.grad, atol=1e-6)


def test_reference_choice_equals_full_tensor_argmax_and_sample():
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(2, 7, 8, generator=g) * 3
    real = torch.randint(0, 50, (2, 7), generator=g)
    u = torch.rand(2, 7, generator=g, dtype=torch.float64)
    with torch.no_grad():
        logits = head(hidden)
        logp = torch.log_softmax(logits, -1)
        for temperature in (0.0, 0.7):
            fake, both = tlp.reference_choice(real, temperature, u, budget_bytes=3 * 50 * 4)(hidden, head)
            assert torch.equal(fake, losses.fake_tokens(logits, temperature, u))
            want = torch.stack([losses.token_logp(logp, real), losses.token_logp(logp, fake)], -1)
            assert torch.allclose(both, want, atol=1e-6, rtol=0)
        assert not torch.equal(fake, logits.argmax(-1))  # the sample is not the argmax here


def test_head_runs_between_lm_head_hooks_as_zero3_needs():
    """ZeRO-3 keeps lm_head's weight partitioned (empty) except between its forward pre-hook and forward hook,
    and regathers it before the module's backward; simulated here with the same hooks."""
    g = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(4, 10, bias=False)
    full = torch.randn(10, 4, generator=g)
    head.weight.data = torch.empty(0)
    events = []

    def gather(*_):
        events.append("gather")
        head.weight.data = full

    def release(*_):
        events.append("release")
        head.weight.data = torch.empty(0)

    head.register_forward_pre_hook(gather)
    head.register_forward_hook(release)
    head.register_full_backward_pre_hook(gather)
    hidden = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    tokens = torch.randint(0, 10, (2, 3, 2), generator=g)
    out = tlp.token_logprobs(tokens, budget_bytes=2 * 10 * 4)(hidden, head)
    assert events == ["gather", "release"]
    out.sum().backward()
    assert events == ["gather", "release", "gather"]
    oracle_w = full.clone().requires_grad_()
    oracle_h = hidden.detach().clone().requires_grad_()
    want = torch.log_softmax(oracle_h @ oracle_w.T, -1).gather(-1, tokens)
    want.sum().backward()
    assert torch.allclose(out, want, atol=1e-6, rtol=0)
    assert torch.allclose(hidden.grad, oracle_h.grad, atol=1e-6)
    assert torch.allclose(head.weight.grad, oracle_w.grad, atol=1e-6)


# ------------------------------------------------------------------ the weight gradient goes into .grad in place

class Allocations(TorchDispatchMode):
    """Every new tensor storage the ops under it create: (op, bytes). Deterministic, unlike RSS or timing;
    views, in-place and out= results reuse an input's storage and are not counted."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if torch.is_tensor(t)}
        for t in tree_flatten(out)[0]:
            if torch.is_tensor(t) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                self.made.append((str(func), t.untyped_storage().nbytes()))
        return out


def head_case(vocab=4096, width=64, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(width, vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, width, generator=g) * 0.3)
    hidden = torch.randn(1, n, width, generator=g, requires_grad=True)
    tokens = torch.randint(0, vocab, (1, n, 2), generator=g)
    weights = torch.randn(1, n, 2, generator=g)
    budget = n * 256 * 4  # backward: 256 vocabulary rows per slice, 16 slices
    return head, hidden, tokens, weights, budget


def oracle_head_grads(head, hidden, tokens, weights):
    w, h = head.weight.detach().clone().requires_grad_(), hidden.detach().clone().requires_grad_()
    ((torch.log_softmax(h @ w.T, -1).gather(-1, tokens)) * weights).sum().backward()
    return h.grad, w.grad


def close(got, want, tol=1e-6):
    """Within tol x max(1, the largest entry), as `assert_same` compares gradients."""
    return (got - want).abs().max().item() <= tol * max(1.0, want.abs().max().item())


def test_weight_gradient_is_added_into_preallocated_grad_without_weight_sized_buffers():
    """With .grad allocated (as between training steps) the head's backward allocates less than half of one
    [V, H] in total: no [V, H] buffer and no per-slice [rows, H] products (16 of those would sum to one [V, H])."""
    head, hidden, tokens, weights, budget = head_case()
    vocab_by_width = head.weight.numel() * 4
    fn = tlp.token_logprobs(tokens, budget)
    (fn(hidden, head) * weights).sum().backward()  # allocates .grad
    first = head.weight.grad.clone()
    storage = head.weight.grad.data_ptr()
    loss = (fn(hidden, head) * weights).sum()
    with Allocations() as made:
        loss.backward()
    assert sum(b for _, b in made.made) < vocab_by_width / 2, sorted(made.made, key=lambda m: -m[1])[:5]
    assert head.weight.grad.data_ptr() == storage  # accumulated where it was
    grad_h, grad_w = oracle_head_grads(head, hidden, tokens, weights)
    assert close(head.weight.grad, first + grad_w)
    assert close(hidden.grad, 2 * grad_h)


def test_tied_embedding_backward_holds_only_the_embeddings_own_dense_gradient():
    """lm_head.weight is embed_tokens.weight: the only [V, H] the backward allocates is the embedding's dense
    gradient (a head buffer would sit in autograd's input buffer through the whole backward and then be summed)."""
    vocab = 2000
    model = random_model(vocab, tie=True, seed=6).train()
    ref = random_model(vocab, tie=True, seed=7).eval()
    batch = batch_of(vocab, seed=4)
    s = settings(vocab, 7)  # 30 positions: 5 vocabulary slices in backward
    t3d_micro_step(model, ref, batch, 0, s)[0].backward()
    first = {n: p.grad.clone() for n, p in model.named_parameters()}
    loss = t3d_micro_step(model, ref, batch, 0, s)[0]
    with Allocations() as made:
        loss.backward()
    weight_sized = [m for m in made.made if m[1] >= vocab * 32 * 4]
    assert [op for op, _ in weight_sized] == ["aten.embedding_dense_backward.default"], weight_sized
    got = {n: p.grad for n, p in model.named_parameters()}
    old = loss_and_grads(lambda m: full_logits_t3d_micro_step(m, ref, batch, 0, s), model)
    assert_same(({}, {n: g - first[n] for n, g in got.items()}), ({}, old[1]), 1e-6)


@pytest.mark.parametrize("tie", [True, False])
def test_preallocated_grads_accumulate_to_the_full_logits_gradients(tie):
    vocab = 500
    model = random_model(vocab, tie=tie, seed=8).train()
    ref = random_model(vocab, tie=tie, seed=9).eval()
    batch = batch_of(vocab, seed=5)
    s = settings(vocab, 4, reference_temp=0.7)
    old = loss_and_grads(lambda m: full_logits_t3d_micro_step(m, ref, batch, 0, s), model)
    offset = {n: torch.randn(p.shape, generator=torch.Generator().manual_seed(i))
              for i, (n, p) in enumerate(model.named_parameters())}
    for n, p in model.named_parameters():
        p.grad = offset[n].clone()
    t3d_micro_step(model, ref, batch, 0, s)[0].backward()
    assert_same(({}, {n: p.grad - offset[n] for n, p in model.named_parameters()}), ({}, old[1]), 1e-6)


def test_autograd_grad_and_backward_inputs_leave_grad_alone():
    """torch.autograd.grad captures the weight's gradient instead of storing it, and backward(inputs=...) without
    the weight does not accumulate it: .grad must stay as it was, and autograd.grad must return the gradient."""
    head, hidden, tokens, weights, budget = head_case(vocab=300, n=6)
    fn = tlp.token_logprobs(tokens, 6 * 50 * 4)
    head.weight.grad = torch.full_like(head.weight, 0.25)
    grad_h, grad_w = torch.autograd.grad((fn(hidden, head) * weights).sum(), [hidden, head.weight])
    want_h, want_w = oracle_head_grads(head, hidden, tokens, weights)
    assert close(grad_w, want_w) and close(grad_h, want_h)
    (fn(hidden, head) * weights).sum().backward(inputs=[hidden])
    assert torch.equal(head.weight.grad, torch.full_like(head.weight, 0.25))
    (fn(hidden, head) * weights).sum().backward(inputs=[head.weight])
    assert close(head.weight.grad, 0.25 + want_w)


def test_gradient_hooks_fire_once_with_the_accumulated_gradient():
    """DDP waits on the accumulator's post hook, DeepSpeed on the tensor's post-accumulate hook; both must fire
    once per backward and see the head's gradient already in .grad."""
    head, hidden, tokens, weights, budget = head_case(vocab=300, n=6)
    fn = tlp.token_logprobs(tokens, 6 * 50 * 4)
    _, want_w = oracle_head_grads(head, hidden, tokens, weights)
    seen = []
    accumulator = head.weight.view_as(head.weight).grad_fn.next_functions[0][0]
    accumulator.register_hook(lambda *_: seen.append(("node", head.weight.grad.clone())))
    head.weight.grad = torch.zeros_like(head.weight)
    (fn(hidden, head) * weights).sum().backward()
    assert [k for k, _ in seen] == ["node"] and close(seen[0][1], want_w)
    seen.clear()
    head.weight.register_post_accumulate_grad_hook(lambda p: seen.append(("tensor", p.grad.clone())))
    head.weight.grad.zero_()
    (fn(hidden, head) * weights).sum().backward()
    assert sorted(k for k, _ in seen) == ["node", "tensor"]
    assert all(close(g, want_w) for _, g in seen)


# ------------------------------------------------------------------ the objectives equal the oracle

@pytest.mark.parametrize("strategy, temperature, lambda_path", [
    ("trace", 0.0, 0.2), ("trace", 0.8, 0.0), ("random", 0.0, 0.0), ("random", 0.8, 0.2)])
def test_t3d_step_equals_full_logits_on_the_tiny_model(tiny, strategy, temperature, lambda_path):
    base, tokenizer = tiny
    vocab = base.config.vocab_size
    model, ref = copy.deepcopy(base).train(), copy.deepcopy(base).eval()
    g = torch.Generator().manual_seed(0)  # seeded: the loss must not depend on what ran before in the process
    with torch.no_grad():  # target != reference, so the DDO terms and their gradients are not at a symmetric point
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    batch = batch_of(vocab)
    s = settings(vocab, 7, mask_strategy=strategy, reference_temp=temperature, lambda_path=lambda_path)
    new = loss_and_grads(lambda m: t3d_micro_step(m, ref, batch, 1, s), model)
    old = loss_and_grads(lambda m: full_logits_t3d_micro_step(m, ref, batch, 1, s), model)
    assert_same(new, old, 1e-6)
    assert abs(new[0]["loss"] - math.log(2) * (1 + s.alpha)) > 2e-3, new[0]["loss"]  # seeded: 4e-3 to 7e-3 away


@pytest.mark.parametrize("temperature, lambda_path", [(0.0, 0.2), (1.0, 0.0)])
def test_t3d_step_equals_full_logits_at_the_real_vocabulary(temperature, lambda_path):
    vocab = 151936
    model = random_model(vocab, tie=False, seed=1).train()
    ref = random_model(vocab, tie=False, seed=2).eval()
    batch = batch_of(vocab, seed=1)
    s = settings(vocab, 8, reference_temp=temperature, lambda_path=lambda_path)
    new = loss_and_grads(lambda m: t3d_micro_step(m, ref, batch, 0, s), model)
    old = loss_and_grads(lambda m: full_logits_t3d_micro_step(m, ref, batch, 0, s), model)
    assert_same(new, old, 1e-6)


@pytest.mark.parametrize("tie", [True, False])
def test_sft_step_equals_full_logits(tie):
    vocab = 500
    model = random_model(vocab, tie=tie, seed=3).train()
    batch = batch_of(vocab, seed=2)
    budget = 5 * vocab * 4  # 5 positions per chunk: the 30 positions in 6 chunks
    new = loss_and_grads(lambda m: (lambda l: (l, {"loss": l}))(
        sft_micro_step(m, batch, 2, 11, 4, vocab - 1, logits_budget_bytes=budget)[0]), model)
    old = loss_and_grads(lambda m: (lambda l: (l, {"loss": l}))(
        full_logits_sft_loss(m, batch, 2, 11, 4, vocab - 1)), model)
    assert_same(new, old, 1e-6)
    assert ("lm_head.weight" in new[1]) == (not tie)


@pytest.mark.parametrize("mode", ["bf16 weights", "autocast"])
def test_bf16_step_matches_full_logits_to_bf16_rounding(mode):
    """bf16 weights, or fp32 weights under bf16 autocast (accelerate's mixed_precision=bf16)."""
    vocab = 300
    model = random_model(vocab, hidden=32, seed=4).train()
    ref = random_model(vocab, hidden=32, seed=5).eval()
    if mode == "bf16 weights":
        model, ref = model.to(torch.bfloat16), ref.to(torch.bfloat16)
    batch = batch_of(vocab, seed=3)
    s = settings(vocab, 4, reference_temp=0.5)

    def run(step):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
            return loss_and_grads(lambda m: step(m, ref, batch, 0, s), model)

    new, old = run(t3d_micro_step), run(full_logits_t3d_micro_step)
    assert all(g.dtype == next(model.parameters()).dtype for g in new[1].values())
    for k in old[0]:  # log-probs are fp32 in both; only bf16 logits/matmuls can round differently
        assert new[0][k] == pytest.approx(old[0][k], rel=1e-3), k
    for n in old[1]:
        scale = old[1][n].float().abs().max().item()
        assert (new[1][n].float() - old[1][n].float()).abs().max().item() <= 2e-2 * scale + 1e-6, n

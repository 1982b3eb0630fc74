"""Noise for T3D / SFT training: hash RNG, mask-ratio law, trace and random masks, random tokens."""
import pytest
import torch

from t3d.train import noising as nz

M64 = (1 << 64) - 1


def _splitmix_ref(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def test_uniform_matches_python_splitmix64_and_is_a_pure_function():
    seed, epoch, stream, index, col = 10086, 3, nz.TIE, 7, 5
    x = _splitmix_ref(_splitmix_ref(_splitmix_ref(_splitmix_ref(seed) + stream) + epoch) + index)
    expected = (_splitmix_ref((x + col) & M64) >> 11) * 2.0**-53
    u = nz.uniform(seed, epoch, stream, torch.tensor([index]), torch.tensor([col]))
    assert u.item() == expected
    a = nz.uniform(1, 0, nz.RATIO, torch.arange(4), 6)
    assert torch.equal(a, nz.uniform(1, 0, nz.RATIO, torch.arange(4), 6))
    assert torch.equal(a[2:3], nz.uniform(1, 0, nz.RATIO, torch.tensor([2]), 6))  # independent of the batch
    assert not torch.equal(a, nz.uniform(1, 1, nz.RATIO, torch.arange(4), 6))  # epoch
    assert not torch.equal(a, nz.uniform(2, 0, nz.RATIO, torch.arange(4), 6))  # seed
    assert not torch.equal(a, nz.uniform(1, 0, nz.TIE, torch.arange(4), 6))  # stream
    big = nz.uniform(0, 0, nz.RATIO, torch.arange(200), 100)
    assert big.min() >= 0 and big.max() < 1 and abs(big.mean().item() - 0.5) < 0.01


def test_mask_ratio_law_matches_the_reference_numbers():
    probs = nz.mask_ratio_probs([1.0, 0.75, 0.5, 0.25], 8.0)
    assert probs.tolist() == pytest.approx([0.9058, 0.0907, 0.00354, 1.38e-5], rel=2e-3)
    u = nz.uniform(0, 0, nz.RATIO, torch.arange(40000), 1)[:, 0]
    r = nz.sample_mask_ratios(u, [1.0, 0.75, 0.5, 0.25], 8.0)
    assert set(r.unique().tolist()) <= {1.0, 0.75, 0.5, 0.25}
    assert (r == 1.0).double().mean().item() == pytest.approx(0.906, abs=0.006)
    assert (r == 0.75).double().mean().item() == pytest.approx(0.091, abs=0.006)
    # inverse CDF boundaries
    edges = nz.sample_mask_ratios(torch.tensor([0.0, 0.9057, 0.9059, 0.99999]), [1.0, 0.75, 0.5, 0.25], 8.0)
    assert edges.tolist() == [1.0, 1.0, 0.75, 0.25]


def _trace(step_map, prompt_len, ratio, length=None, block=4, tie=None):
    step_map = torch.tensor([step_map])
    n = step_map.shape[1]
    valid = torch.arange(n)[None] < (n if length is None else length)
    tie = torch.zeros(1, n) if tie is None else tie
    rank, count = nz.decode_rank(step_map, valid, torch.tensor([prompt_len % block]), block, tie)
    return (valid & nz.trace_mask(rank, count, torch.tensor([ratio]))).int()[0].tolist()


def test_trace_masks_the_latest_decoded_tokens_of_each_block():
    # B=4, block aligned with the response: steps [3,1,4,2]
    assert _trace([3, 1, 4, 2], 8, 0.5) == [1, 0, 1, 0]  # steps 4 and 3 are still masked
    assert _trace([3, 1, 4, 2], 8, 0.25) == [0, 0, 1, 0]
    assert _trace([3, 1, 4, 2], 8, 0.75) == [1, 0, 1, 1]
    assert _trace([3, 1, 4, 2], 8, 1.0) == [1, 1, 1, 1]
    assert _trace([3, 1, 4, 2], 8, 0.1) == [0, 0, 1, 0]  # at least one per block


def test_trace_uses_absolute_position_blocks_and_ignores_padding():
    # prompt_len 6: columns 0-1 share block 1 with the prompt tail, 2-5 are block 2, 6 opens block 3
    assert _trace([2, 1, 5, 3, 6, 4, 7], 6, 0.5) == [1, 0, 1, 0, 1, 0, 1]
    # same trajectory, last two columns are batch padding: never masked, not counted in their block
    assert _trace([2, 1, 5, 3, 6, 4, 0, 0], 6, 0.5, length=6) == [1, 0, 1, 0, 1, 0, 0, 0]
    # step 0 (never selected) ranks as decoded first
    assert _trace([0, 2, 1, 3], 0, 0.25) == [0, 0, 0, 1]


def test_trace_ties_are_broken_by_the_seeded_key():
    picks = set()
    for epoch in range(12):
        tie = nz.uniform(5, epoch, nz.TIE, torch.tensor([0]), 4)
        mask = _trace([1, 1, 1, 1], 0, 0.5, tie=tie)
        assert sum(mask) == 2
        assert mask == _trace([1, 1, 1, 1], 0, 0.5, tie=tie.clone())
        picks.add(tuple(mask))
    assert len(picks) > 1


def _batch(lengths, prompt_lens, seed=0, index=None):
    b, L = len(lengths), max(lengths)
    g = torch.Generator().manual_seed(seed)
    steps = torch.stack([torch.randperm(L, generator=g) + 1 for _ in range(b)])
    return {
        "index": torch.arange(b) if index is None else torch.tensor(index),
        "prompt_len": torch.tensor(prompt_lens),
        "response_ids": torch.randint(10, 100, (b, L), generator=g),
        "response_len": torch.tensor(lengths),
        "real_len": torch.tensor(lengths),
        "step_map": steps,
    }


NOISE = dict(seed=3, block_size=4, mask_id=3, mask_ratios=(1.0, 0.75, 0.5, 0.25), exponent=0.0,
             random_ratio=0.0, vocab_ids=torch.arange(4, 100))


def test_random_strategy_masks_ceil_ratio_per_block():
    batch = _batch([16] * 400, [8] * 400)
    out = nz.t3d_noise(batch, 0, strategy="random", **NOISE)
    per_block = out["masked"].view(400, 4, 4).sum(-1)
    expected = torch.ceil(out["ratio"] * 4).long()[:, None].expand_as(per_block)
    assert torch.equal(per_block, expected)
    # uniform over positions: each column masked at the overall rate
    rate = out["masked"].double().mean(0)
    assert (rate - rate.mean()).abs().max() < 0.08


def test_noise_is_resampled_each_epoch_deterministic_and_batch_independent():
    batch = _batch([13, 9, 11], [5, 7, 8])
    for strategy in ("trace", "random"):
        e0 = nz.t3d_noise(batch, 0, strategy=strategy, **NOISE)
        again = nz.t3d_noise(batch, 0, strategy=strategy, **NOISE)
        assert torch.equal(e0["masked"], again["masked"]) and torch.equal(e0["noisy"], again["noisy"])
        epochs = [nz.t3d_noise(batch, e, strategy=strategy, **NOISE)["masked"] for e in range(1, 6)]
        assert any(not torch.equal(e0["masked"], m) for m in epochs)
        # record 1 alone (same index) gets the same row as inside the batch
        alone = {k: (v[1:2, : 9] if v.dim() == 2 else v[1:2]) for k, v in batch.items()}
        solo = nz.t3d_noise(alone, 0, strategy=strategy, **NOISE)
        assert torch.equal(solo["masked"][0], e0["masked"][1, :9])
        assert not e0["masked"][1, 9:].any()  # padding never masked


def test_random_replacement_count_and_tokens():
    batch = _batch([20] * 50, [4] * 50)
    args = {**NOISE, "random_ratio": 0.1, "mask_ratios": (1.0,)}
    out = nz.t3d_noise(batch, 0, strategy="trace", **args)
    masked, noisy = out["masked"], out["noisy"]
    assert masked.all()  # ratio 1
    replaced = masked & (noisy != 3)
    assert torch.equal(replaced.sum(1), torch.full((50,), 2))  # floor(20 * 0.1)
    assert ((noisy[replaced] >= 4) & (noisy[replaced] < 100)).all()
    # at least one random token per sample, even when floor(n * ratio) == 0
    small = nz.t3d_noise(_batch([3] * 10, [4] * 10), 0, strategy="trace", **args)
    assert torch.equal((small["masked"] & (small["noisy"] != 3)).sum(1), torch.ones(10, dtype=torch.long))
    # unmasked positions keep their token
    half = nz.t3d_noise(batch, 0, strategy="random", **{**args, "mask_ratios": (0.5,)})
    assert torch.equal(half["noisy"][~half["masked"]], batch["response_ids"][~half["masked"]])


def test_sft_noise_masks_at_least_one_per_block_with_uniform_ratio():
    batch = _batch([16] * 500, [8] * 500)
    out = nz.sft_noise(batch, 0, seed=1, block_size=4, mask_id=3)
    per_block = out["masked"].view(500, 4, 4).sum(-1)
    assert per_block.min() >= 1 and per_block.max() == 4
    # r ~ U(0,1], k = ceil(4r): each k in 1..4 equally likely
    freq = torch.bincount(per_block.flatten(), minlength=5)[1:].double() / per_block.numel()
    assert (freq - 0.25).abs().max() < 0.03
    assert torch.equal(out["noisy"] == 3, out["masked"])
    short = nz.sft_noise(_batch([16, 5], [8, 8]), 0, seed=1, block_size=4, mask_id=3)
    assert not short["masked"][1, 5:].any()

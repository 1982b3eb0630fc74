"""Noisy responses for block-diffusion training: which positions are masked, and with what.

Everything is vectorised over the batch and reproducible per record: each random number is a pure
function of (seed, epoch, record index, column, stream), computed by a counter-based hash
(splitmix64 in int64 arithmetic). A record therefore gets the same noise whatever batch, process or
resume point it lands in, and new noise every epoch.

Blocks are absolute-position blocks (block = position // B), as the decoder and `t3d.model.masks`
use them: response column j sits at position prompt_len + j, so the first response block is
shared with the prompt tail and holds only B - prompt_len % B response tokens.
"""
import torch

# streams: independent random sequences for each use
RATIO, TIE, RANDOM_ORDER, REPLACE_PICK, REPLACE_TOKEN, FAKE_SAMPLE, BLOCK_RATIO = range(1, 8)


def _i64(c):
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN, _M1, _M2 = _i64(0x9E3779B97F4A7C15), _i64(0xBF58476D1CE4E5B9), _i64(0x94D049BB133111EB)


def _shr(x, k):  # logical right shift of int64 bit patterns
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix(x):
    """splitmix64 step on int64 tensors (multiplication wraps modulo 2**64)."""
    x = x + _GOLDEN
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def uniform(seed, epoch, stream, index, columns):
    """U[0, 1) float64 [b, C] for records `index` [b] and `columns` (int or [C]); pure function."""
    index = torch.as_tensor(index, dtype=torch.long)
    device = index.device
    if isinstance(columns, int):
        columns = torch.arange(columns, device=device)
    head = _mix(_mix(_mix(torch.tensor(int(seed), dtype=torch.long, device=device)) + int(stream)) + int(epoch))
    x = _mix(_mix(head + index[:, None]) + columns.to(device)[None, :])
    return _shr(x, 11).double() * 2.0**-53


def mask_ratio_probs(mask_ratios, exponent):
    """P(r) proportional to r ** exponent: [1, .75, .5, .25] with 8 -> 0.906, 0.091, 0.0035, 1.4e-5."""
    ratios = torch.as_tensor(list(mask_ratios), dtype=torch.float64)
    weights = ratios**exponent
    return weights / weights.sum()


def sample_mask_ratios(u, mask_ratios, exponent):
    """One ratio per row from uniforms u [b] by inverse CDF."""
    probs = mask_ratio_probs(mask_ratios, exponent).to(u.device)
    idx = torch.searchsorted(probs.cumsum(0), u.double() * probs.sum(), right=True).clamp(max=len(probs) - 1)
    return torch.as_tensor(list(mask_ratios), dtype=torch.float64, device=u.device)[idx]


def _slots(offset, length, block_size):
    """Response column held by each block slot: [b, NB*B] (out of range = outside the response)."""
    n_blocks = (length + block_size - 1) // block_size + 1  # +1: room for the shift by offset
    return torch.arange(n_blocks * block_size, device=offset.device)[None] - offset[:, None]


def to_blocks(x, offset, block_size, fill):
    """[b, L] response-column tensor -> [b, NB, B] in absolute-position blocks; `fill` outside."""
    b, length = x.shape
    slots = _slots(offset, length, block_size)
    inside = (slots >= 0) & (slots < length)
    out = x.gather(1, slots.clamp(0, max(length - 1, 0))).masked_fill(~inside, fill)
    return out.view(b, -1, block_size)


def from_blocks(blocks, offset, length):
    """Inverse of `to_blocks`: [b, NB, B] -> [b, L]."""
    cols = torch.arange(length, device=blocks.device)[None] + offset[:, None]
    return blocks.flatten(1).gather(1, cols)


def block_rank(key, valid, offset, block_size):
    """Ascending rank of `key` among the valid positions of each block, and the block's valid count.

    key [b, L] (float), valid [b, L] bool -> (rank [b, L] long, count [b, L] long). Equal keys rank
    by position. Invalid positions get rank >= count.
    """
    inf = torch.finfo(torch.float64).max
    k = to_blocks(key.double().masked_fill(~valid, inf), offset, block_size, inf)
    v = to_blocks(valid, offset, block_size, False)
    pos = torch.arange(block_size, device=key.device)
    other, this = k[..., None, :], k[..., :, None]
    before = (other < this) | ((other == this) & (pos[None, :] < pos[:, None]))
    rank = (before & v[..., None, :]).sum(-1)  # [b, NB, B]: valid keys ranked ahead of slot i
    count = v.sum(-1, keepdim=True).expand_as(rank)
    return from_blocks(rank, offset, key.shape[1]), from_blocks(count, offset, key.shape[1])


def n_to_mask(ratio, count):
    """ceil(ratio * count) per position's block, at least one where the block has valid tokens."""
    k = torch.ceil(ratio[:, None].double() * count - 1e-9).long()
    return torch.where(count > 0, k.clamp(min=1), k)


def decode_rank(step_map, valid, offset, block_size, tie_u):
    """Within-block rank by decoding time (0 = decoded first); ties broken by the uniforms tie_u."""
    key = step_map.double() + 0.5 * tie_u  # steps are integers, so the jitter only orders ties
    return block_rank(key, valid, offset, block_size)


def trace_mask(rank, count, ratio):
    """Real intermediate states: the ceil(r*n) LATEST-decoded valid tokens of each block stay masked."""
    return rank >= count - n_to_mask(ratio, count)


def random_mask(valid, offset, block_size, ratio, u):
    """ceil(r*n) uniformly chosen valid tokens per block (n = valid tokens of the block)."""
    rank, count = block_rank(u, valid, offset, block_size)
    return valid & (rank < n_to_mask(ratio, count))


def replace_with_random(tokens, masked, mask_id, random_ratio, pick_u, token_u, vocab_ids):
    """Masked positions -> mask_id, except max(1, floor(n_masked * random_ratio)) per row (when
    random_ratio > 0), chosen at random, which get a uniformly random token from vocab_ids."""
    noisy = tokens.masked_fill(masked, mask_id)
    if random_ratio <= 0:
        return noisy
    n_masked = masked.sum(1, keepdim=True)
    n_random = torch.clamp(torch.floor(n_masked * random_ratio).long(), min=1).minimum(n_masked)
    order = pick_u.masked_fill(~masked, 2.0).argsort(1).argsort(1)  # rank among masked positions
    pick = masked & (order < n_random)
    vocab_ids = vocab_ids.to(tokens.device)
    random_tokens = vocab_ids[(token_u * len(vocab_ids)).long().clamp(max=len(vocab_ids) - 1)]
    return torch.where(pick, random_tokens, noisy)


def t3d_noise(batch, epoch, seed, block_size, mask_id, strategy, mask_ratios, exponent, random_ratio, vocab_ids):
    """Noisy responses for one T3D micro-batch.

    batch: `index` [b], `prompt_len` [b], `response_ids` [b, L], `response_len` [b] (incl. post pads),
    `step_map` [b, L]. Returns noisy [b, L], masked [b, L] (loss positions), rank [b, L]
    (within-block decoding rank, for the path loss) and the per-row ratio [b].
    """
    index, tokens = batch["index"], batch["response_ids"]
    b, length = tokens.shape
    offset = batch["prompt_len"].to(tokens.device) % block_size
    valid = torch.arange(length, device=tokens.device)[None] < batch["response_len"].to(tokens.device)[:, None]
    ratio = sample_mask_ratios(uniform(seed, epoch, RATIO, index, 1)[:, 0], mask_ratios, exponent)
    rank, count = decode_rank(batch["step_map"], valid, offset, block_size, uniform(seed, epoch, TIE, index, length))
    if strategy == "trace":
        masked = valid & trace_mask(rank, count, ratio)
    elif strategy == "random":
        masked = random_mask(valid, offset, block_size, ratio, uniform(seed, epoch, RANDOM_ORDER, index, length))
    else:
        raise ValueError(f"training.mask_strategy must be 'trace' or 'random', got '{strategy}'")
    noisy = replace_with_random(
        tokens, masked, mask_id, random_ratio, uniform(seed, epoch, REPLACE_PICK, index, length),
        uniform(seed, epoch, REPLACE_TOKEN, index, length), vocab_ids,
    )
    return {"noisy": noisy, "masked": masked, "rank": rank, "ratio": ratio}


def sft_noise(batch, epoch, seed, block_size, mask_id):
    """Standard block-diffusion noise: each block draws r ~ U(0, 1] and masks ceil(r*n) random tokens."""
    index, tokens = batch["index"], batch["response_ids"]
    b, length = tokens.shape
    offset = batch["prompt_len"].to(tokens.device) % block_size
    valid = torch.arange(length, device=tokens.device)[None] < batch["response_len"].to(tokens.device)[:, None]
    n_blocks = (length + block_size - 1) // block_size + 1
    block_r = 1.0 - uniform(seed, epoch, BLOCK_RATIO, index, n_blocks)  # (0, 1]
    block_of = (torch.arange(length, device=tokens.device)[None] + offset[:, None]) // block_size
    ratio = block_r.gather(1, block_of)  # [b, L]: each position carries its block's ratio
    rank, count = block_rank(uniform(seed, epoch, RANDOM_ORDER, index, length), valid, offset, block_size)
    k = torch.where(count > 0, torch.ceil(ratio * count - 1e-9).long().clamp(min=1), count)
    masked = valid & (rank < k)
    return {"noisy": tokens.masked_fill(masked, mask_id), "masked": masked}

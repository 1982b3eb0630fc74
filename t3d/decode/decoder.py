"""Batched block-diffusion decoding (SDAR), the one decoder used by rollout, evaluation and benchmarks.

Each sequence is generated block by block. Blocks are aligned to absolute positions (block = pos // B),
so the prompt tail (P mod B tokens) sits in the first generated block, fixed, and is never rewritten.
A block starts with its free positions set to <|MASK|> and is denoised in at most S steps:

    n_s   = floor(B / S) + [s < B mod S]                  tokens to unmask at step s (sums to B)
    p_i   = TopP(softmax(TopK(logits_i / T)))             per position i of the block
    x_i   ~ p_i  (argmax when T = 0),  c_i = p_i(x_i)     candidate token and its confidence
    static : unmask the min(n_s, #masked) masked positions with the largest c_i
    dynamic: unmask every masked i with c_i > tau, or the static choice if that is more

`step_map[i]` is the 1-based per-sequence denoising step at which token i was unmasked.

Cost: the prompt's complete blocks are prefilled into a KV cache once; each denoising step runs only
the B active tokens against the cache; a finished block's clean K/V are committed inside the next
block's first forward (its B tokens ride along as extra queries), so a sequence costs
1 prefill + (steps actually used) forwards -- the reference spends one more "save" pass per block.

Sampling noise is a counter-based hash of (sequence seed, step, position), so a sequence's output
does not depend on which batch, shard or process decoded it.
"""
import sys
from dataclasses import dataclass, field

import torch

from t3d.model.sdar import SDARBlockCache

from t3d.model.masks import block_attention_mask

STRATEGIES = ("low_confidence_static", "low_confidence_dynamic")
MODES = ("cached", "cached_save_pass", "recompute")


@dataclass
class DecodeConfig:
    block_size: int = 4
    steps_per_block: int = 4
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    strategy: str = "low_confidence_static"
    dynamic_threshold: float = 0.9
    random_init_ratio: float = 0.0
    stop_at_eos: bool = True

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"remasking_strategy '{self.strategy}': expected one of {', '.join(STRATEGIES)}")
        if self.block_size < 1 or self.steps_per_block < 1 or self.max_new_tokens < 1:
            raise ValueError("block_size, denoising_steps_per_block and max_token must be >= 1")
        if self.steps_per_block > self.block_size:  # would silently run as S = B
            raise ValueError(f"denoising_steps_per_block={self.steps_per_block} exceeds block_size={self.block_size}")
        if not self.temperature >= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0")
        if not 0 < self.dynamic_threshold <= 1:
            raise ValueError("dynamic_threshold must be in (0, 1]")
        if not 0 <= self.random_init_ratio < 1:
            raise ValueError("random_init_ratio must be in [0, 1)")


@dataclass
class DecodeOutput:
    token_ids: list = field(default_factory=list)  # per sequence: generated ids (stop token included)
    step_maps: list = field(default_factory=list)  # per sequence: aligned 1:1 with token_ids
    nfe: list = field(default_factory=list)  # per sequence: forwards it took part in (prefill included)
    prefill_nfe: list = field(default_factory=list)  # per sequence: of those, prompt prefills (0 or 1)
    finished: list = field(default_factory=list)  # True if a stop token ended it, False if cut at max
    batch_forwards: int = 0  # model calls actually made for the whole batch


def unmask_schedule(block_size, steps):
    """Tokens to unmask at each of the S steps: B // S each, the remainder to the earliest steps."""
    return [block_size // steps + (s < block_size % steps) for s in range(steps)]


_MOD = 2147483647  # 2^31 - 1: products stay inside int64


def hash_uniform(*keys):
    """Deterministic U(0,1) from integer tensors/ints (broadcast), via rounds of Lehmer mixing."""
    h = torch.zeros((), dtype=torch.long)
    for k in keys:
        k = torch.as_tensor(k, dtype=torch.long) % _MOD
        h = (h * 48271 + k + 1) % _MOD
        h = (h * 69621) % _MOD
        h = ((h ^ (h >> 13)) * 16807) % _MOD
    return (h.double() + 0.5) / _MOD


def sequence_seeds(seed, indices):
    """One seed per sequence from a run seed and its global index (item * replicas + replica)."""
    u = hash_uniform(torch.as_tensor(indices, dtype=torch.long), seed)
    return (u * _MOD).long()


def sample_tokens(logits, cfg, uniforms):
    """logits [b, B, V] -> tokens [b, B], confidence [b, B] (probability of the chosen token)."""
    logits = logits.float()
    if cfg.temperature == 0:
        probs = logits.softmax(-1)
        conf, tokens = probs.max(-1)
        return tokens, conf
    logits = logits / cfg.temperature
    if cfg.top_k > 0:
        kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if cfg.top_p < 1:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > cfg.top_p  # keep the smallest prefix reaching top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0))
        probs = probs / probs.sum(-1, keepdim=True)
    # inverse-CDF sampling with per-(sequence, step, position) uniforms
    cdf = probs.cumsum(-1)
    u = (uniforms.to(cdf.dtype) * cdf[..., -1]).unsqueeze(-1)
    tokens = torch.searchsorted(cdf, u).squeeze(-1).clamp(max=probs.shape[-1] - 1)
    return tokens, probs.gather(-1, tokens[..., None]).squeeze(-1)


def select_positions(conf, candidates, k, cfg):
    """Bool [b, B]: which candidate positions to unmask this step (never a fixed position)."""
    scores = conf.masked_fill(~candidates, float("-inf"))
    top = torch.zeros_like(candidates)
    if k > 0:
        top.scatter_(1, scores.topk(min(k, scores.shape[1]), dim=1).indices, True)
    top &= candidates  # when k exceeds the masks left, top-k also returns -inf (fixed) positions
    if cfg.strategy == "low_confidence_dynamic":
        confident = candidates & (conf > cfg.dynamic_threshold)
        enough = confident.sum(1, keepdim=True) >= k
        return torch.where(enough, confident, top | confident)
    return top


@torch.no_grad()
def generate(model, prompts, cfg: DecodeConfig, *, mask_id, pad_id, stop_ids=(), seeds=None, mode="cached",
             vocab_for_random=None):
    """Decode a batch of tokenised prompts (list of id lists). See the module docstring.

    seeds: per-sequence ints (e.g. from `sequence_seeds`); they make sampling and random init
    reproducible independently of batching. mode: "cached" (default), "cached_save_pass" (the
    reference's extra commit forward per block) or "recompute" (no cache; for tests and benchmarks).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    B, S, M = cfg.block_size, cfg.steps_per_block, cfg.max_new_tokens
    n = len(prompts)
    seeds = torch.as_tensor(range(n) if seeds is None else seeds, dtype=torch.long)
    lens = torch.tensor([len(p) for p in prompts])
    if (lens == 0).any():
        raise ValueError("empty prompt")
    full_blocks = lens // B
    tail = lens - full_blocks * B  # prompt tokens sharing the first generated block
    kmax = int(full_blocks.max())
    c0 = kmax * B  # every row's first generated block starts at this column
    pad = (kmax - full_blocks) * B  # left padding in whole blocks keeps column blocks == position blocks
    n_blocks = -(-(int(tail.max()) + M) // B)
    T = c0 + n_blocks * B

    tokens = torch.full((n, T), mask_id, dtype=torch.long)
    for i, p in enumerate(prompts):  # collation: one copy per prompt
        tokens[i, pad[i]: pad[i] + len(p)] = torch.as_tensor(p)
    # all decoding state lives on the model's device: no per-step host round trips
    tokens, pad, tail, full_blocks, seeds = (t.to(device) for t in (tokens, pad, tail, full_blocks, seeds))
    cols = torch.arange(T, device=device)
    tokens[cols[None] < pad[:, None]] = pad_id
    pos = (cols[None] - pad[:, None]).clamp(min=0)
    valid = cols[None] >= pad[:, None]
    steps = torch.zeros(n, T, dtype=torch.long, device=device)  # step_map per column
    gen_start = c0 + tail  # first generated column per row
    stop_set = set(stop_ids)
    stop_ids = torch.tensor(sorted(stop_set), dtype=torch.long, device=device)
    random_pool = None
    if cfg.random_init_ratio > 0:
        vocab = vocab_for_random or model.config.vocab_size
        random_pool = torch.tensor([t for t in range(vocab) if t != mask_id and t not in stop_set], device=device)

    out = DecodeOutput(token_ids=[None] * n, step_maps=[None] * n, nfe=[0] * n, finished=[False] * n,
                       prefill_nfe=[0] * n)
    nfe = torch.zeros(n, dtype=torch.long, device=device)
    step_count = torch.zeros(n, dtype=torch.long, device=device)  # per-row global denoising step
    rows = torch.arange(n, device=device)  # original index of each live row
    arange_b = torch.arange(B, device=device)[None]
    cache = None
    if mode != "recompute":
        # a model loaded through a checkpoint's own code (trust_remote_code) checks for its own cache class
        cache_class = getattr(sys.modules.get(type(model).__module__), "SDARBlockCache", SDARBlockCache)
        cache = cache_class(model.config, n, T, dtype=dtype, device=device)
    schedule = unmask_schedule(B, S)

    def forward(q_start, q_end, commit, noisy_from):
        """One model call over query columns [q_start, q_end) for live rows; logits of the last B."""
        k_end = q_end
        k_slice = slice(0, k_end)
        kn = (cols[k_slice] >= noisy_from)[None].expand(len(rows), -1)
        q = slice(q_start, q_end)
        mask = block_attention_mask(
            pos[rows, q], kn[:, q], valid[rows, q], pos[rows, k_slice], kn, valid[rows, k_slice], B
        )
        res = model(
            input_ids=tokens[rows, q], position_ids=pos[rows, q], attention_mask=mask,
            past_key_values=cache, commit_kv=commit, logits_to_keep=B,
        )
        out.batch_forwards += 1
        return res.logits

    if c0 > 0 and cache is not None:  # prefill the prompt's complete blocks once
        forward(0, c0, c0, noisy_from=T)
        nfe += (full_blocks > 0).long()  # rows that are all padding there only ride along
        out.prefill_nfe = (full_blocks > 0).long().tolist()
    pending_commit = False  # a finished block waiting to ride along with the next forward
    for blk in range(n_blocks):
        s_col, e_col = c0 + blk * B, c0 + (blk + 1) * B
        block = slice(s_col, e_col)
        masked = tokens[rows, block] == mask_id
        random_init = torch.zeros_like(masked)
        if random_pool is not None:
            u = hash_uniform(seeds[rows, None], -1 - blk, arange_b)
            rank = u.masked_fill(~masked, 2.0).argsort(1).argsort(1)
            random_init = rank < (masked.sum(1, keepdim=True).double() * cfg.random_init_ratio).floor().long()
            pick = (hash_uniform(seeds[rows, None], -1000 - blk, arange_b) * len(random_pool)).long()
            tokens[rows, block] = torch.where(random_init, random_pool[pick], tokens[rows, block])
        for s in range(S):
            selectable = (tokens[rows, block] == mask_id) | random_init
            active = selectable.any(1)
            if not active.any():
                break
            if mode == "recompute":
                logits = forward(0, e_col, 0, noisy_from=s_col)
            elif pending_commit:
                logits = forward(s_col - B, e_col, B, noisy_from=s_col)
                pending_commit = False
            else:
                logits = forward(s_col, e_col, 0, noisy_from=s_col)
            logits[..., mask_id] = float("-inf")  # unmasking to <|MASK|> would leave the position masked
            u = hash_uniform(seeds[rows, None], step_count[rows, None], arange_b)
            cand, conf = sample_tokens(logits, cfg, u)
            chosen = select_positions(conf, selectable & active[:, None], schedule[s], cfg)
            live_tokens = tokens[rows, block]
            tokens[rows, block] = torch.where(chosen, cand, live_tokens)
            steps[rows, block] = torch.where(chosen, (step_count[rows] + 1)[:, None], steps[rows, block])
            random_init &= ~chosen
            step_count[rows] += active.long()
            nfe[rows] += active.long()
        # block done: stop at the first stop token or at max_new_tokens
        gen = cols[None, block] >= gen_start[rows, None]
        n_before = (s_col - gen_start[rows]).clamp(min=0)  # tokens generated in earlier blocks
        over = gen & ((n_before[:, None] + gen.long().cumsum(1)) > M)
        is_stop = gen & ~over & torch.isin(tokens[rows, block], stop_ids)
        if not cfg.stop_at_eos:
            is_stop.zero_()
        hit_stop = is_stop.any(1)
        done = hit_stop | over.any(1) | (blk == n_blocks - 1)
        end_col = torch.where(
            hit_stop, s_col + is_stop.long().argmax(1) + 1,
            torch.where(over.any(1), s_col + over.long().argmax(1), torch.full_like(s_col + over[:, 0], e_col)),
        )
        finished_rows = done.nonzero().flatten()
        for j, i, a, b_ in zip(finished_rows.tolist(), rows[finished_rows].tolist(),
                               gen_start[rows[finished_rows]].tolist(), end_col[finished_rows].tolist()):
            out.token_ids[i] = tokens[i, a:b_].tolist()  # finished sequences leave the batch
            out.step_maps[i] = steps[i, a:b_].tolist()
            out.finished[i] = bool(hit_stop[j])
        keep = ~done
        if not keep.any():
            break
        if done.any():
            rows = rows[keep]
            if cache is not None:
                cache.select_rows(keep.nonzero().flatten())
        if mode == "cached_save_pass":  # the reference's separate commit forward
            forward(s_col, e_col, B, noisy_from=T)
            nfe[rows] += 1
        elif mode == "cached":
            pending_commit = True
    out.nfe = nfe.tolist()
    return out

"""Data building: seconds to turn 10,000 rollout records into T3D training tensors.

    python -m benchmarks.bench_data [--records 10000] [--repeats 3] [--threads 1] [--quick]

vectorised: the toolkit's path per micro-batch of 8: `t3d.train.data.Collate` (per-batch padding),
            `t3d.train.noising.t3d_noise` (trace masks, random replacement) and `t3d.model.masks.training_layout`
            (input ids, position ids, block attention mask).
loop:       the same tensors built the straightforward way: a Python loop over rows, and inside each row
            over blocks (ranks, masks, mask rectangles), then padded and stacked.
Both use the same counter-based random numbers (`noising.uniform`), so they must agree exactly: the first
`--verify` batches are compared tensor by tensor before anything is timed.
"""
import argparse
import math
import sys

import torch

from benchmarks import common as C
from t3d.model.masks import training_layout
from t3d.train import noising
from t3d.train.data import Collate, EpochShuffle

BLOCK = 4
SEED, EPOCH = 10086, 0
MASK_RATIOS, EXPONENT, RANDOM_RATIO = (1.0, 0.75, 0.5, 0.25), 8.0, 0.1
KEYS = ("input_ids", "position_ids", "attention_mask", "noisy", "masked", "rank")


def vectorised_batch(examples, collate, mask_id, vocab_ids, layout=True):
    batch = collate(examples)
    noise = noising.t3d_noise(batch, EPOCH, SEED, BLOCK, mask_id, "trace", MASK_RATIOS, EXPONENT, RANDOM_RATIO,
                              vocab_ids)
    if not layout:
        return noise
    lay = training_layout(batch["prompt_ids"], batch["prompt_len"], batch["response_ids"], batch["response_len"],
                          noise["noisy"], BLOCK)
    return {**lay, "noisy": noise["noisy"], "masked": noise["masked"], "rank": noise["rank"]}


# ---------------------------------------------------------------- per-row, per-block reference loop

def _row_noise(ex, ratio_cdf, mask_id, vocab, n_vocab):
    """Trace masks and random replacement of one record, block by block."""
    idx, P, resp, steps = ex["index"], len(ex["prompt_ids"]), ex["response_ids"], ex["step_map"]
    L = len(resp)
    index = torch.tensor([idx])
    u_ratio = noising.uniform(SEED, EPOCH, noising.RATIO, index, 1)[0, 0].item()
    tie = noising.uniform(SEED, EPOCH, noising.TIE, index, L)[0].tolist()
    pick_u = noising.uniform(SEED, EPOCH, noising.REPLACE_PICK, index, L)[0].tolist()
    token_u = noising.uniform(SEED, EPOCH, noising.REPLACE_TOKEN, index, L)[0].tolist()
    target = u_ratio * ratio_cdf[-1]
    ratio = MASK_RATIOS[min(next((i for i, c in enumerate(ratio_cdf) if c > target), len(MASK_RATIOS)),
                            len(MASK_RATIOS) - 1)]
    rank, masked = [0] * L, [False] * L
    offset = P % BLOCK
    start = 0
    while start < L:  # one absolute-position block of the response at a time
        end = min(L, start + BLOCK - (offset if start == 0 else 0))
        cols = sorted(range(start, end), key=lambda j: (steps[j] + 0.5 * tie[j], j))  # decoding order
        count = end - start
        n_mask = max(1, math.ceil(ratio * count - 1e-9))
        for r, j in enumerate(cols):
            rank[j] = r
            masked[j] = r >= count - n_mask  # the latest-decoded tokens stay masked
        start = end
    noisy = [mask_id if m else t for t, m in zip(resp, masked)]
    masked_cols = [j for j in range(L) if masked[j]]
    n_random = min(max(1, math.floor(len(masked_cols) * RANDOM_RATIO)), len(masked_cols))
    for j in sorted(masked_cols, key=lambda j: pick_u[j])[:n_random]:
        noisy[j] = vocab[min(int(token_u[j] * n_vocab), n_vocab - 1)]
    return noisy, masked, rank


def _row_layout(prompt, resp, noisy, lp, lr, pad_id):
    """input ids, positions, valid flags and the N x N mask of one row, the mask filled block by block."""
    P, L, t = len(prompt), len(resp), BLOCK - 1
    n = lp + lr + t + lr
    prompt_row = [pad_id] * (lp - P) + prompt
    tail_src = ([0] * (t - lp) + prompt_row) if t > lp else prompt_row[lp - t:]
    ids = prompt_row + resp + [pad_id] * (lr - L) + tail_src + noisy + [pad_id] * (lr - L)
    first_block = (P // BLOCK) * BLOCK
    tail_pos = [P - t + i for i in range(t)]
    pos = ([max(c - (lp - P), 0) for c in range(lp)] + [P + j for j in range(lr)]
           + [max(p, 0) for p in tail_pos] + [P + j for j in range(lr)])
    valid = ([c >= lp - P for c in range(lp)] + [j < L for j in range(lr)]
             + [p >= first_block and p >= 0 for p in tail_pos] + [j < L for j in range(lr)])
    mask = torch.zeros(n, n, dtype=torch.bool)
    c0, c1 = lp - P, lp + L  # valid clean columns: position = column - c0
    n0 = lp + lr + t  # first noisy response column: position = column - n0 + P
    for b in range((P + L - 1) // BLOCK + 1):  # clean queries of block b see clean keys of blocks <= b
        lo, hi = c0 + b * BLOCK, min(c0 + (b + 1) * BLOCK, c1)
        mask[lo:hi, c0:hi] = True
    for b in range(P // BLOCK, (P + L - 1) // BLOCK + 1):  # noisy queries: own noisy block + clean blocks < b
        lo, hi = n0 - P + max(b * BLOCK, P - P % BLOCK), n0 - P + min((b + 1) * BLOCK, P + L)
        mask[lo:hi, lo:hi] = True
        mask[lo:hi, c0:min(c0 + b * BLOCK, c1)] = True
    invalid = [c for c in range(n) if not valid[c]]
    mask[invalid, invalid] = True  # padding queries attend to themselves only
    return ids, pos, valid, mask


def loop_batch(examples, mask_id, pad_id, vocab, ratio_cdf, layout=True):
    lp = max(len(e["prompt_ids"]) for e in examples)
    lr = max(len(e["response_ids"]) for e in examples)
    out = {k: [] for k in KEYS}
    n_vocab = len(vocab)
    for ex in examples:
        noisy, masked, rank = _row_noise(ex, ratio_cdf, mask_id, vocab, n_vocab)
        L = len(noisy)
        # rank at padding columns follows block_rank: the block's number of valid tokens
        P = len(ex["prompt_ids"])
        pad_rank = []
        for j in range(L, lr):
            blk_start = max(0, ((P + j) // BLOCK) * BLOCK - P)
            pad_rank.append(max(0, L - blk_start) if blk_start < L else 0)
        if layout:
            ids, pos, _, mask = _row_layout(ex["prompt_ids"], ex["response_ids"], noisy, lp, lr, pad_id)
            out["input_ids"].append(ids)
            out["position_ids"].append(pos)
            out["attention_mask"].append(mask)
        out["noisy"].append(noisy + [pad_id] * (lr - L))
        out["masked"].append(masked + [False] * (lr - L))
        out["rank"].append(rank + pad_rank)
    stacked = {k: torch.tensor(v) for k, v in out.items() if k != "attention_mask" and v}
    if layout:
        stacked["attention_mask"] = torch.stack(out["attention_mask"])[:, None]
    return stacked


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-prompt", type=int, default=200)
    p.add_argument("--max-response", type=int, default=256)
    p.add_argument("--response-median", type=int, default=150)
    p.add_argument("--verify", type=int, default=50, help="batches compared tensor by tensor before timing")
    p.add_argument("--quick", action="store_true", help="smoke run: 200 records, 1 repeat, nothing written")
    C.add_common_args(p, repeats=3)
    args = p.parse_args(argv)
    if args.quick:
        args.records, args.repeats = 200, 1
    info = C.start(args)
    tok = C.tiny_tokenizer()
    vocab_ids = C.plain_vocab(tok)
    examples = C.synthetic_examples(args.records, vocab_ids, tok.eos_token_id, tok.pad_token_id, seed=2,
                                    prompt_range=(40, args.max_prompt), response_median=args.response_median,
                                    max_response=args.max_response)
    order = list(EpochShuffle(len(examples), SEED))  # the trainer's batching: shuffled, padded per batch
    batches = [[examples[i] for i in order[k: k + args.batch]] for k in range(0, len(order), args.batch)]
    collate, mask_id, pad_id = Collate(tok.pad_token_id), tok.mask_token_id, tok.pad_token_id
    vocab_list = vocab_ids.tolist()
    ratio_cdf = noising.mask_ratio_probs(MASK_RATIOS, EXPONENT).cumsum(0).tolist()

    for k, group in enumerate(batches[: args.verify]):
        a = vectorised_batch(group, collate, mask_id, vocab_ids)
        b = loop_batch(group, mask_id, pad_id, vocab_list, ratio_cdf)
        for key in KEYS:
            assert torch.equal(a[key], b[key]), f"batch {k}: '{key}' differs between vectorised and loop"
    print(f"verified: {min(args.verify, len(batches))} batches identical ({', '.join(KEYS)})", file=sys.stderr)

    def run(builder, **kw):
        def build_all():  # batch by batch, as the trainer consumes them (each batch is dropped after use)
            for group in batches:
                out = builder(group, **kw)
            return out["rank"].shape

        return build_all

    variants = {  # full build, and the noise part alone (collate + masks + ranks + random tokens, no layout)
        "vectorised": run(vectorised_batch, collate=collate, mask_id=mask_id, vocab_ids=vocab_ids),
        "loop": run(loop_batch, mask_id=mask_id, pad_id=pad_id, vocab=vocab_list, ratio_cdf=ratio_cdf),
        "vectorised noise only": run(vectorised_batch, collate=collate, mask_id=mask_id, vocab_ids=vocab_ids,
                                     layout=False),
        "loop noise only": run(loop_batch, mask_id=mask_id, pad_id=pad_id, vocab=vocab_list, ratio_cdf=ratio_cdf,
                               layout=False),
    }
    times, walls, _ = C.interleaved(variants, args.repeats, warmup=0, clock=args.clock)
    med = {k: C.median(v) for k, v in times.items()}
    resp = [len(e["response_ids"]) for e in examples]
    prm = [len(e["prompt_ids"]) for e in examples]
    layout_v = med["vectorised"] - med["vectorised noise only"]
    layout_l = med["loop"] - med["loop noise only"]
    rows = [
        ["full build", med["vectorised"], med["loop"], med["loop"] / med["vectorised"], args.records / med["vectorised"]],
        ["noise part (collate, masks, ranks, random tokens)", med["vectorised noise only"], med["loop noise only"],
         med["loop noise only"] / med["vectorised noise only"], args.records / med["vectorised noise only"]],
        ["layout part (ids, positions, N x N mask) = difference", layout_v, layout_l, layout_l / max(layout_v, 1e-9),
         args.records / max(layout_v, 1e-9)],
    ]
    headers = ["work", "vectorised s", "loop s", "loop / vectorised", "records/s (vectorised)"]
    notes = [
        f"{args.records:,} synthetic rollout records: prompts {min(prm)}-{max(prm)} tokens (mean {sum(prm) / len(prm):.0f}), "
        f"responses {min(resp)}-{max(resp)} (median {sorted(resp)[len(resp) // 2]}, max = training.max_gen_length "
        f"{args.max_response}), static S=4 step maps; micro-batches of {args.batch} in the trainer's shuffled order; "
        f"B=4, trace masks, random_ratio {RANDOM_RATIO}.",
        f"Built per batch: input ids, position ids, [b,1,N,N] attention mask, noisy response, loss mask, decoding rank; "
        f"both builders verified identical on {min(args.verify, len(batches))} batches. Median of {args.repeats} "
        f"interleaved runs, {args.clock} time.",
        f"Speed-up of the vectorised toolkit code: {med['loop'] / med['vectorised']:.1f}x overall, "
        f"{med['loop noise only'] / med['vectorised noise only']:.1f}x on the noise part.",
    ]
    payload = {"records": args.records, "batch_size": args.batch, "prompt_len_mean": sum(prm) / len(prm),
               "response_len_median": sorted(resp)[len(resp) // 2], "max_response": args.max_response,
               "repeats": args.repeats, "seconds": times, "wall_seconds": walls, "median_s": med, "speedup": med["loop"] / med["vectorised"],
               "speedup_noise_part": med["loop noise only"] / med["vectorised noise only"]}
    C.report("data", "Data building: training tensors for rollout records", info,
             [("", C.markdown_table(headers, rows))], notes, payload, args.out, write=not args.quick)


if __name__ == "__main__":
    main()

"""Decoding cost: generated tokens/s and forwards per token of the three decoder variants.

    python -m benchmarks.bench_decoding [--repeats 3] [--threads 1] [--quick]

(a) cached: the toolkit's decoder (KV cache; a finished block's K/V committed inside the next
    block's first forward);
(b) cached_save_pass: the same decoder with one extra "save" forward per block, as the reference does;
(c) recompute: no cache, the whole sequence is re-run at every denoising step.
All three are `t3d.decode.decoder.generate` (mode=...), static strategy, greedy, EOS ignored, so every
sequence generates exactly `length` tokens. Model: random SDAR of the embedded default's shape.
(c) is quadratic in length; it runs on the `--recompute-lengths` subset (default 128 and 256).
"""
import argparse
import sys

from benchmarks import common as C
from t3d.decode.decoder import DecodeConfig, generate

MODES = {"a": "cached", "b": "cached_save_pass", "c": "recompute"}
PROMPT_LENGTHS = (37, 42, 50, 61)  # prompt tails 1, 2, 2, 1 share the first generated block


def decode_fn(model, tok, prompts, length, steps, mode, block_size=4):
    cfg = DecodeConfig(block_size=block_size, steps_per_block=steps, max_new_tokens=length,
                       strategy="low_confidence_static", temperature=0.0, stop_at_eos=False)
    return lambda: generate(model, prompts, cfg, mask_id=tok.mask_token_id, pad_id=tok.pad_token_id,
                            stop_ids=(tok.eos_token_id,), mode=mode)


def measure(model, tok, prompts, lengths, steps_list, recompute_lengths, repeats, clock):
    """Interleaved: each round runs every (length, S) config, and inside it the variants in rotated order."""
    configs = [(L, S) for L in lengths for S in steps_list]
    variants = {}
    for L, S in configs:
        for key, mode in MODES.items():
            if key == "c" and L not in recompute_lengths:
                continue
            variants[(L, S, key)] = decode_fn(model, tok, prompts, L, S, mode)
    # warm-up: every mode once on a short decode (first calls pay allocator and dispatch set-up)
    for mode in MODES.values():
        decode_fn(model, tok, prompts, 16, 4, mode)()
    times, walls = {k: [] for k in variants}, {k: [] for k in variants}
    outputs = {}
    for r in range(repeats):
        for L, S in configs:
            keys = [k for k in variants if k[:2] == (L, S)]
            shift = r % len(keys)
            for k in keys[shift:] + keys[:shift]:
                seconds, wall, outputs[k] = C.timed(variants[k], clock)
                times[k].append(seconds)
                walls[k].append(wall)
        print(f"round {r + 1}/{repeats} done", file=sys.stderr)
    rows = []
    for (L, S, key), ts in times.items():
        out = outputs[(L, S, key)]
        n_seq = len(out.token_ids)
        generated = sum(len(t) for t in out.token_ids)
        assert generated == n_seq * L, "EOS is ignored: every sequence must generate exactly `length` tokens"
        nfe = sum(out.nfe) / n_seq
        denoise = max(max(m) for m in out.step_maps)  # global denoising steps of the longest sequence
        same = out.token_ids == outputs[(L, S, "a")].token_ids
        rows.append({
            "variant": key, "mode": MODES[key], "length": L, "steps_per_block": S,
            "seconds": C.median(ts), "seconds_all": [round(t, 4) for t in ts],
            "wall_seconds_all": [round(t, 4) for t in walls[(L, S, key)]],
            "tokens_per_s": generated / C.median(ts),
            "forwards_per_token": nfe / L, "tokens_per_forward": L / nfe,
            "tokens_per_denoising_step": L / denoise, "batch_forwards": out.batch_forwards,
            "same_tokens_as_a": same,
        })
    return rows


def summarise(rows, lengths, steps_list, recompute_lengths):
    by = {(r["length"], r["steps_per_block"], r["variant"]): r for r in rows}
    table = []
    for L in lengths:
        for S in steps_list:
            a, b, c = (by.get((L, S, k)) for k in "abc")
            table.append([
                L, S, a["tokens_per_s"], b["tokens_per_s"], c["tokens_per_s"] if c else None,
                b["seconds"] / a["seconds"], (c["seconds"] / a["seconds"]) if c else None,
                a["forwards_per_token"], b["forwards_per_token"], c["forwards_per_token"] if c else None,
                a["tokens_per_forward"],
            ])
    headers = ["len", "S", "tok/s (a)", "tok/s (b)", "tok/s (c)", "time b/a", "time c/a",
               "fwd/tok (a)", "fwd/tok (b)", "fwd/tok (c)", "tok/fwd (a)"]
    trend = []
    lo, hi = (256, 1024) if {256, 1024} <= set(lengths) else (lengths[0], lengths[-1])
    for S in steps_list:
        r = by[(hi, S, "a")]["seconds"] / by[(lo, S, "a")]["seconds"]
        trend.append({"steps_per_block": S, "from": lo, "to": hi, "total_time_ratio": r,
                      "per_token_time_ratio": r * lo / hi})
    c_lens = [L for L in lengths if L in recompute_lengths]
    c_trend = []
    if len(c_lens) >= 2:
        for S in steps_list:
            r = by[(c_lens[-1], S, "c")]["seconds"] / by[(c_lens[0], S, "c")]["seconds"]
            c_trend.append({"steps_per_block": S, "from": c_lens[0], "to": c_lens[-1], "total_time_ratio": r,
                            "per_token_time_ratio": r * c_lens[0] / c_lens[-1]})
    return headers, table, trend, c_trend


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4], help="denoising steps per block (S)")
    p.add_argument("--recompute-lengths", type=int, nargs="+", default=[128, 256],
                   help="lengths at which the quadratic no-cache variant (c) runs")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="smoke run: lengths 16 32, 1 repeat, nothing written")
    C.add_common_args(p, repeats=3)
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.recompute_lengths, args.repeats = [16, 32], [16, 32], 1
    info = C.start(args)
    tok = C.tiny_tokenizer()
    model = C.random_sdar(tok, seed=0)
    prompts = C.random_prompts(args.batch, PROMPT_LENGTHS, C.plain_vocab(tok), seed=0)
    rows = measure(model, tok, prompts, args.lengths, args.steps, set(args.recompute_lengths), args.repeats, args.clock)
    headers, table, trend, c_trend = summarise(rows, args.lengths, args.steps, set(args.recompute_lengths))
    shape = C.model_shape(model)
    notes = [
        f"Random SDAR of the embedded default's shape ({shape['layers']} layers, hidden {shape['hidden_size']}, "
        f"vocab {shape['vocab']}, {shape['params_M']}M params, fp32); batch {args.batch}, prompts of "
        f"{', '.join(map(str, PROMPT_LENGTHS))} tokens, B=4, static, greedy, EOS ignored; median of "
        f"{args.repeats} interleaved rounds, {args.clock} time.",
        "(a) cached, commit folded into the next block's first forward; (b) cached + a separate save pass per "
        "block (reference); (c) no cache, full recompute every step"
        + (f" (run at lengths {', '.join(map(str, sorted(args.recompute_lengths)))} only: quadratic)."
           if set(args.lengths) - set(args.recompute_lengths) else "."),
        "fwd/tok = forwards per generated token per sequence (prefill included); tok/fwd (a) at S=1 -> B = 4.",
    ]
    notes += [f"(a) S={t['steps_per_block']}: time({t['to']})/time({t['from']}) = {t['total_time_ratio']:.2f} "
              f"(per token {t['per_token_time_ratio']:.2f}; flat = {t['to'] / t['from']:.0f} and 1.00)" for t in trend]
    notes += [f"(c) S={t['steps_per_block']}: time({t['to']})/time({t['from']}) = {t['total_time_ratio']:.2f} "
              f"(per token {t['per_token_time_ratio']:.2f})" for t in c_trend]
    payload = {"model": shape, "batch": args.batch, "block_size": 4, "prompt_lengths": PROMPT_LENGTHS,
               "repeats": args.repeats, "rows": rows, "cached_length_trend": trend, "recompute_length_trend": c_trend}
    C.report("decoding", "Decoding: tokens/s and forwards per token", info,
             [("", C.markdown_table(headers, table))], notes, payload, args.out, write=not args.quick)


if __name__ == "__main__":
    main()

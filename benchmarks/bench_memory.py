"""Decoding memory: peak memory of decoding 64 prompts to 1024 new tokens with the KV cache.

    python -m benchmarks.bench_memory [--batch 64] [--length 1024] [--steps 4] [--runs 1] [--quick]

The decode runs in a fresh subprocess (see `common.MEMORY_METHOD`): peak RSS during `generate` minus the
RSS before it (model and prompts loaded). The cache estimate is exact arithmetic: the decoder preallocates
K and V for every layer, row and column it will ever use, 2 x layers x batch x kv_heads x T x head_dim
x bytes, T = prompt blocks + generated blocks (`cache_columns`). Model: random SDAR of the embedded
default's shape; static strategy, greedy, EOS ignored (every row generates `length` tokens).
"""
import argparse
from pathlib import Path

from benchmarks import common as C
from t3d.decode.decoder import DecodeConfig, generate

SDAR_4B = dict(layers=36, kv_heads=8, head_dim=128, bytes=2)  # bf16 cache of the SDAR-4B shape


def cache_columns(prompt_lengths, new_tokens, block_size):
    """Columns the decoder allocates: whole prompt blocks of the longest prompt + blocks for tail + new tokens."""
    full = max(p // block_size for p in prompt_lengths)
    tail = max(p % block_size for p in prompt_lengths)
    return full * block_size + -(-(tail + new_tokens) // block_size) * block_size


def cache_bytes(layers, batch, kv_heads, columns, head_dim, bytes_per):
    return 2 * layers * batch * kv_heads * columns * head_dim * bytes_per


def prompt_lengths(batch):
    return [40 + (7 * i) % 64 for i in range(batch)]  # 40..103 tokens, every prompt-tail offset present


def child(args):
    C.set_threads(args.threads)
    tok = C.tiny_tokenizer()
    model = C.random_sdar(tok, seed=0)
    prompts = C.random_prompts(args.batch, prompt_lengths(args.batch), C.plain_vocab(tok), seed=0)
    cfg = DecodeConfig(block_size=4, steps_per_block=args.steps, max_new_tokens=args.length, stop_at_eos=False)
    (seconds, wall, out), memory = C.measure_peak(lambda: C.timed(lambda: generate(
        model, prompts, cfg, mask_id=tok.mask_token_id, pad_id=tok.pad_token_id, stop_ids=(tok.eos_token_id,)), "cpu"))
    assert all(len(t) == args.length for t in out.token_ids)
    print(C.json.dumps({**memory, "cpu_s": seconds, "wall_s": wall, "batch_forwards": out.batch_forwards,
                        "model": C.model_shape(model)}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--steps", type=int, default=4, help="denoising steps per block (memory does not depend on it)")
    p.add_argument("--runs", type=int, default=1, help="fresh subprocesses (median reported)")
    p.add_argument("--quick", action="store_true", help="smoke run: batch 8, 64 tokens, nothing written")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    C.add_common_args(p, repeats=1)
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.length = 8, 64
    if args.child:
        return child(args)
    info = C.start(args)
    runs = [C.run_child(Path(__file__), ["--child", "--batch", args.batch, "--length", args.length, "--steps",
                                         args.steps, "--threads", args.threads]) for _ in range(args.runs)]
    shape = runs[0]["model"]
    lengths = prompt_lengths(args.batch)
    columns = cache_columns(lengths, args.length, 4)
    cache = cache_bytes(shape["layers"], args.batch, shape["kv_heads"], columns, shape["head_dim"], 4) / 2**20
    peak = C.median([r["peak_extra_mib"] for r in runs])
    cpu = C.median([r["cpu_s"] for r in runs])
    tokens = args.batch * args.length
    rows = [[args.batch, args.length, columns, cache, peak, peak - cache, tokens / cpu]]
    headers = ["batch", "new tokens", "cache columns T", "cache MiB (exact)", "peak extra MiB (measured)",
               "other MiB", "tok/s (cpu)"]
    big = {n: cache_bytes(SDAR_4B["layers"], b, SDAR_4B["kv_heads"], cache_columns(lengths[:1] * b, m, 4),
                          SDAR_4B["head_dim"], SDAR_4B["bytes"]) / 2**30 for n, (b, m) in
           {"64 x 1024": (64, 1024), "128 x 2000": (128, 2000)}.items()}
    notes = [
        f"Random SDAR of the embedded default's shape ({shape['layers']} layers, {shape['kv_heads']} KV heads x "
        f"{shape['head_dim']}, fp32 cache); prompts of {min(lengths)}-{max(lengths)} tokens; B=4, S={args.steps}, "
        f"static, greedy, EOS ignored; {args.runs} fresh process(es), {args.clock if args.clock != 'auto' else 'cpu'} "
        f"time for tok/s.",
        "other = logits, masks, sampling temporaries and allocator slack on top of the cache.",
        "Memory: " + C.MEMORY_METHOD,
        f"Same arithmetic for SDAR-4B (36 layers, 8 KV heads x 128, bf16): {big['64 x 1024']:.1f} GiB for "
        f"64 prompts x 1024 tokens, {big['128 x 2000']:.1f} GiB for 128 x 2000 (prompt {lengths[0]} tokens).",
    ]
    payload = {"batch": args.batch, "new_tokens": args.length, "steps_per_block": args.steps, "prompt_lengths": lengths,
               "cache_columns": columns, "cache_mib": cache, "peak_extra_mib": peak, "runs": runs,
               "memory_method": C.MEMORY_METHOD, "sdar_4b_cache_gib": big}
    C.report("memory", f"Decoding memory: {args.batch} prompts x {args.length} tokens with the KV cache", info,
             [("", C.markdown_table(headers, rows))], notes, payload, args.out, write=not args.quick)


if __name__ == "__main__":
    main()

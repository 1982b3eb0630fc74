"""GPU check: SDAR-4B-shaped random model in bf16 on one GPU (prepared for one H200, < 8 minutes).

    python -m benchmarks.gpu_check              # needs CUDA (a CUDA build of torch 2.13 + requirements.txt)
    python -m benchmarks.gpu_check --dry-run    # tiny shape on CPU in seconds: exercises every code path

1. Rollout throughput: `t3d.decode.decoder.generate` (cached, folded commits), B=4, S=4, batch 128, 2000 new
   tokens, static strategy, temperature 0.1 (the shipped rollout config), EOS ignored; shown beside the
   published JetEngine figures for SDAR-4B on H200 (3,700-5,000 tokens/s). A 128-token warm-up decode
   projects the full run's time; if it would not fit `--decode-budget` seconds, the length is cut to fit
   and the table says so.
2. Attention alone at a ~4k-token T3D training layout (prompt 1,024 + response 1,536 twice, the block mask the
   trainer builds), one layer's q/k/v at SDAR-4B's heads: for each attention implementation that runs on the
   device, which kernel SDPA dispatched to (profiler op names), seconds and peak memory of forward + backward.
3. One T3D training step as the trainer runs it with mixed_precision bf16: fp32 master weights under
   bf16 autocast, frozen bf16 reference copy, gradient checkpointing, fused AdamW; seconds per step and
   peak memory, beside the reference-style step (reference x2 no grad, target x2 with grad) on the same
   model and batch (one shared target/optimizer: two fp32 AdamW copies of 4B would not fit with the rest).
Writes benchmarks/results/gpu_check.{json,md} (the dry run writes only with --out).
"""
import argparse
import copy
import sys
import time

import torch

from benchmarks import common as C
from benchmarks.bench_training import reference_style_micro_step
from t3d.decode.decoder import DecodeConfig, generate
from t3d.model.checkpoint import ATTN_IMPLEMENTATIONS, attn_implementation_problem
from t3d.model.masks import training_layout
from t3d.model.sdar.modeling_sdar import flex_block_mask, sdar_attention
from t3d.model.sdar import SDARConfig, SDARForCausalLM
from t3d.train.data import Collate
from t3d.train.objectives import T3DSettings, t3d_micro_step

SDAR_4B = dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, vocab_size=151936, rope_theta=1e6, max_position_embeddings=32768,
               tie_word_embeddings=False)
SDAR_4B_IDS = dict(pad_token_id=151643, eos_token_id=151645, mask_token_id=151669)  # Qwen ids the real tokenizer uses
TINY = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=48, vocab_size=1024, rope_theta=1e4, max_position_embeddings=4096, tie_word_embeddings=False)
TINY_IDS = dict(pad_token_id=0, eos_token_id=2, mask_token_id=3)
JETENGINE_H200 = "3,700-5,000"


class Device:
    """Synchronisation and peak memory for CUDA, or for the CPU dry run (peak RSS)."""

    def __init__(self, name):
        self.name, self.cuda = name, name.startswith("cuda")

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self):
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            C.reset_peak_rss()

    def peak_gib(self):
        self.sync()
        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else C.maxrss_mib() / 1024

    def now_gib(self):
        return torch.cuda.memory_allocated() / 2**30 if self.cuda else C.current_rss_mib() / 1024


def build(shape, ids, dtype, device):
    """Random weights, created directly on the device in `dtype` (rotary frequencies stay fp32)."""
    config = SDARConfig(**shape, **ids, bos_token_id=None, block_size=4, attention_bias=False)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = SDARForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def random_ids(n, lengths, vocab, seed, exclude):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(10, vocab, (lengths[i % len(lengths)],), generator=g)
        out.append([t if t not in exclude else 10 for t in ids.tolist()])
    return out


def rollout(model, dev, args, ids):
    """Warm-up decode, projection, then the timed decode -> result dict."""
    exclude = set(ids.values())
    lengths = [64 + (37 * i) % 160 for i in range(args.rollout_batch)]  # 64..223-token prompts
    prompts = random_ids(args.rollout_batch, lengths, model.config.vocab_size, 0, exclude)

    def run(new_tokens):
        cfg = DecodeConfig(block_size=4, steps_per_block=4, max_new_tokens=new_tokens, temperature=0.1,
                           strategy="low_confidence_static", stop_at_eos=False)
        dev.sync()
        start = time.perf_counter()
        out = generate(model, prompts, cfg, mask_id=ids["mask_token_id"], pad_id=ids["pad_token_id"],
                       stop_ids=(ids["eos_token_id"],), seeds=range(len(prompts)))
        dev.sync()
        return time.perf_counter() - start, out

    run(8)  # first calls: CUDA context, cuBLAS handles, allocator
    warm_tokens = min(128, args.new_tokens)
    warm_s, _ = run(warm_tokens)
    # per-token cost grows with the cache (attention reads all of it): assume twice the short-run rate
    projected = warm_s / warm_tokens * args.new_tokens * 2.0
    new_tokens = args.new_tokens
    if projected > args.decode_budget:
        new_tokens = max(warm_tokens, int(args.new_tokens * args.decode_budget / projected) // 4 * 4)
        print(f"projected {projected:.0f}s > budget {args.decode_budget}s: decoding {new_tokens} tokens", file=sys.stderr)
    dev.reset_peak()
    base = dev.now_gib()
    seconds, out = run(new_tokens)
    generated = sum(len(t) for t in out.token_ids)
    assert generated == len(prompts) * new_tokens
    return {"batch": len(prompts), "new_tokens": new_tokens, "requested_new_tokens": args.new_tokens,
            "seconds": seconds, "tokens_per_s": generated / seconds, "batch_forwards": out.batch_forwards,
            "tokens_per_forward_per_seq": new_tokens / (sum(out.nfe) / len(out.nfe)),
            "warmup_tokens": warm_tokens, "warmup_s": warm_s, "projected_s": projected,
            "peak_gib": dev.peak_gib(), "peak_extra_gib": dev.peak_gib() - base, "prompt_lengths": [min(lengths), max(lengths)]}


SDPA_KERNELS = ("flash_attention", "efficient_attention", "cudnn_attention", "math", "for_cpu")


def sdpa_kernel_ops(q, k, v, mask, scale):
    """Names of the scaled-dot-product ops one SDPA call ran (the fused kernel it chose, or the math fallback)."""
    from torch.profiler import profile

    with profile() as prof:
        sdar_attention(q, k, v, mask, scale, "sdpa")
    names = sorted({e.name for e in prof.events() if "scaled_dot_product" in e.name})
    return names or ["(no scaled_dot_product op: math path)"]


def attention(shape, dev, args, dtype):
    """Per implementation: forward + backward of one layer's attention at the training layout -> result dict."""
    prompt, response = args.attn_prompt, args.attn_response
    P, R = torch.randint(10, 100, (1, prompt)), torch.randint(10, 100, (1, response))
    lay = training_layout(P, torch.tensor([prompt]), R, torch.tensor([response]), torch.full_like(R, 3), 4)
    mask = lay["attention_mask"].to(dev.name)
    length = mask.shape[-1]
    heads, kv, hd = shape["num_attention_heads"], shape["num_key_value_heads"], shape["head_dim"]
    g = torch.Generator(device=dev.name).manual_seed(0)
    q = torch.randn(1, heads, length, hd, device=dev.name, dtype=dtype, generator=g)
    k = torch.randn(1, kv, length, hd, device=dev.name, dtype=dtype, generator=g)
    v = torch.randn(1, kv, length, hd, device=dev.name, dtype=dtype, generator=g)
    scale = hd ** -0.5
    results = {"layout_tokens": length, "sdpa_kernel": sdpa_kernel_ops(q, k, v, mask, scale), "by_implementation": {}}
    for name in ATTN_IMPLEMENTATIONS[1:]:
        problem = attn_implementation_problem(name, dev.name)
        if problem or name == "flash_attention_2":  # flash-attn has no arbitrary mask: it serves unmasked calls only
            results["by_implementation"][name] = {"skipped": problem or "no arbitrary-mask support (unmasked calls only)"}
            continue
        backward = dev.cuda or name != "flex_attention"  # FlexAttention has no CPU backward
        leaves = [t.detach().requires_grad_(backward) for t in (q, k, v)]

        def run():
            block = flex_block_mask(mask, 1, length, length) if name == "flex_attention" else mask
            out = sdar_attention(*leaves, block, scale, name)
            if backward:
                out.float().square().mean().backward()
            dev.sync()

        run()  # compile / warm-up
        dev.reset_peak()
        base = dev.now_gib()
        start = time.perf_counter()
        run()
        results["by_implementation"][name] = {"seconds": time.perf_counter() - start, "backward": backward,
                                              "peak_extra_gib": dev.peak_gib() - base}
    return results


def training(model, dev, args, ids, dtype):
    """T3D step and reference-style step (interleaved, same target + optimizer) -> result dict."""
    target = model.float().train()  # fp32 master weights, as accelerate's bf16 mixed precision keeps them
    ref = copy.deepcopy(target).to(dtype).requires_grad_(False).eval()
    if args.grad_ckpt:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(target.parameters(), lr=1e-6, weight_decay=0.01, **({"fused": True} if dev.cuda else {}))
    vocab = torch.arange(10, target.config.vocab_size)
    vocab = vocab[~torch.isin(vocab, torch.tensor(list(ids.values())))]  # no pad / eos / mask in the responses
    examples = C.synthetic_examples(args.train_batch, vocab, ids["eos_token_id"], ids["pad_token_id"], seed=1,
                                    prompt_range=(args.train_prompt // 2, args.train_prompt),
                                    response_median=args.train_response, max_response=args.train_response)
    batch = {k: v.to(dev.name) for k, v in Collate(ids["pad_token_id"])(examples).items()}
    settings = T3DSettings(seed=10086, block_size=4, mask_id=ids["mask_token_id"], vocab_ids=vocab.to(dev.name),
                           path_k_steps=2)
    micro = {"toolkit": lambda: t3d_micro_step(target, ref, batch, 0, settings)[0],
             "reference": lambda: reference_style_micro_step(target, ref, batch, 0, settings)}

    def step(name):
        with torch.autocast(device_type="cuda" if dev.cuda else "cpu", dtype=dtype):
            loss = micro[name]()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(target.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dev.sync()
        return loss.detach()

    times, peaks = {n: [] for n in micro}, {}
    step("toolkit")  # warm-up: AdamW state, kernels, allocator
    step("reference")
    for r in range(args.train_steps):
        for name in (("toolkit", "reference") if r % 2 == 0 else ("reference", "toolkit")):
            dev.reset_peak()
            start = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - start)
            peaks[name] = max(peaks.get(name, 0.0), dev.peak_gib())
    med = {n: C.median(t) for n, t in times.items()}
    tokens = int(batch["prompt_len"].sum() + batch["response_len"].sum())
    return {"batch": args.train_batch, "tokens": tokens, "layout_columns": batch["prompt_ids"].shape[1]
            + 2 * batch["response_ids"].shape[1] + 3, "gradient_checkpointing": args.grad_ckpt, "seconds": times,
            "median_s": med, "ratio": med["toolkit"] / med["reference"], "peak_gib": peaks,
            "tokens_per_s": {n: tokens / med[n] for n in med}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny shape on CPU, small sizes: checks the code paths")
    p.add_argument("--rollout-batch", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=2000)
    p.add_argument("--decode-budget", type=float, default=240.0, help="seconds the timed decode may take")
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--train-prompt", type=int, default=512, help="longest prompt (shortest is half)")
    p.add_argument("--train-response", type=int, default=1024, help="response length (training.max_gen_length)")
    p.add_argument("--train-steps", type=int, default=3, help="timed steps per variant")
    p.add_argument("--no-grad-ckpt", dest="grad_ckpt", action="store_false")
    p.add_argument("--attn-prompt", type=int, default=1024, help="attention check: prompt tokens")
    p.add_argument("--attn-response", type=int, default=1536, help="attention check: response tokens (twice in the layout)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results on GPU, none for --dry-run)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    dtype = torch.bfloat16
    if args.dry_run:
        shape, ids, device = TINY, TINY_IDS, "cpu"
        args.rollout_batch, args.new_tokens, args.train_batch = 4, 32, 2
        args.train_prompt, args.train_response, args.train_steps = 32, 48, 1
        args.attn_prompt, args.attn_response = 40, 60
        C.set_threads(C.DEFAULT_THREADS)
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_check: no CUDA device (use --dry-run to check the code on CPU)")
        shape, ids, device = SDAR_4B, SDAR_4B_IDS, "cuda"
        torch.backends.cuda.matmul.allow_tf32 = True
        args.out = args.out or str(C.RESULTS)
    dev = Device(device)
    info = C.machine_info("wall")
    model = build(shape, ids, dtype, device)
    params_b = sum(q.numel() for q in model.parameters()) / 1e9
    print(f"built {params_b:.4g}B-parameter random SDAR ({shape['num_hidden_layers']} layers) on {device}", file=sys.stderr)

    roll = rollout(model, dev, args, ids)
    print(f"rollout: {roll['tokens_per_s']:.0f} tok/s", file=sys.stderr)
    attn = attention(shape, dev, args, dtype)
    print(f"attention: SDPA ran {', '.join(attn['sdpa_kernel'])}", file=sys.stderr)
    train = training(model, dev, args, ids, dtype)
    total = time.perf_counter() - started

    cache_gib = 2 * shape["num_hidden_layers"] * roll["batch"] * shape["num_key_value_heads"] * shape["head_dim"] * 2 \
        * (roll["prompt_lengths"][1] + roll["new_tokens"] + 4) / 2**30
    decode_rows = [[roll["batch"], roll["new_tokens"], roll["tokens_per_s"], JETENGINE_H200, roll["seconds"],
                    roll["tokens_per_forward_per_seq"], roll["peak_gib"], cache_gib]]
    decode_headers = ["batch", "new tokens", "tok/s", "JetEngine tok/s (published)", "s", "tok/fwd per seq",
                      "peak GiB", "KV cache GiB (approx)"]
    mem_unit = "GiB" if dev.cuda else "GiB RSS"
    train_rows = [[n, train["median_s"][n], train["tokens_per_s"][n], train["peak_gib"][n]] for n in ("toolkit", "reference")]
    train_rows.append(["toolkit / reference", train["ratio"], None,
                       train["peak_gib"]["toolkit"] / train["peak_gib"]["reference"]])
    train_headers = ["T3D step", "s/step (median)", "tokens/s", f"peak {mem_unit}"]
    notes = [
        f"{'DRY RUN (tiny shape on CPU): not a measurement. ' if args.dry_run else ''}Random SDAR "
        f"({params_b:.4g}B params: hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, "
        f"{shape['num_attention_heads']} heads / {shape['num_key_value_heads']} KV, vocab {shape['vocab_size']}), bf16.",
        f"Rollout: B=4, S=4, static, temperature 0.1, EOS ignored, prompts {roll['prompt_lengths'][0]}-"
        f"{roll['prompt_lengths'][1]} tokens" + ("" if roll["new_tokens"] == roll["requested_new_tokens"] else
                                                  f"; cut from {roll['requested_new_tokens']} tokens to fit the time budget")
        + f". JetEngine figures are the published SDAR-4B numbers on H200 (different engine: paged KV, CUDA graphs).",
        f"Training: micro-batch {train['batch']} ({train['tokens']} prompt+response tokens, layout "
        f"{train['layout_columns']} columns), fp32 master weights + bf16 autocast, bf16 reference, gradient "
        f"checkpointing {'on' if train['gradient_checkpointing'] else 'off'}, {'fused ' if dev.cuda else ''}AdamW; "
        f"median of {args.train_steps} interleaved steps; peak = "
        f"{'max memory allocated' if dev.cuda else 'process RSS high-water mark'} during the step.",
        f"Script wall time {total:.0f} s.",
    ]
    attn_rows = [[name, r.get("skipped") or ("forward + backward" if r["backward"] else "forward only"),
                  r.get("seconds"), r.get("peak_extra_gib")] for name, r in attn["by_implementation"].items()]
    notes.insert(2, f"Attention: one layer, {attn['layout_tokens']}-token training layout (prompt {args.attn_prompt}, "
                    f"response {args.attn_response} clean + noisy), bf16; SDPA dispatched to "
                    f"{', '.join(attn['sdpa_kernel'])}.")
    payload = {"dry_run": args.dry_run, "shape": shape, "params_b": params_b, "rollout": roll, "attention": attn,
               "training": train,
               "jetengine_h200_tok_s": JETENGINE_H200, "total_s": total}
    C.report("gpu_check", "GPU check: SDAR-4B shape, bf16", info,
             [("Rollout:", C.markdown_table(decode_headers, decode_rows)),
              ("Attention at the training layout (one layer):", C.markdown_table(
                  ["implementation", "pass", "s", f"peak extra {mem_unit}"], attn_rows)),
              ("Training step:", C.markdown_table(train_headers, train_rows))],
             notes, payload, args.out or C.RESULTS, write=args.out is not None)


if __name__ == "__main__":
    main()

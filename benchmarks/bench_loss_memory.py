"""Loss memory: peak extra memory and time of one T3D micro-step, full-vocabulary log-probs vs the chunked head.

    python -m benchmarks.bench_loss_memory [--lengths 128 256 512 1024] [--repeats 3] [--memory-runs 1] [--quick]

full:    the objective as it was: `log_softmax(logits.float())` of the whole [b, L, V] for the reference and the
         target (`full_logits_t3d_micro_step`, kept here and in the tests as the oracle).
chunked: `t3d.train.objectives.t3d_micro_step`: LM head + log-probs a chunk of positions at a time
         (`t3d.train.token_logprobs`, default budget: one chunk of fp32 logits <= 32 MiB).

Work measured = one micro-step as the trainer runs it: reference forward (no grad), target forward, backward,
with the gradient buffers already allocated (DDP and DeepSpeed keep them between steps). Memory: see
`common.MEMORY_METHOD`, one fresh subprocess per variant and length. Time: median seconds per micro-step,
the two variants interleaved in one process on the same weights and batch (the losses are checked equal).
Model: random SDAR with SDAR's vocabulary (151,936), 2 layers, hidden 256, untied head, fp32; micro-batch 2,
100-token prompts, every response exactly `length` tokens, B=4, trace masks, greedy fake tokens.
"""
import argparse
import copy
from pathlib import Path

import torch

from benchmarks import common as C
from t3d.train import losses, noising
from t3d.train.data import Collate
from t3d.train.objectives import T3DSettings, noisy_logits, t3d_micro_step
from t3d.train.token_logprobs import chunk_positions

VARIANTS = ("full", "chunked")
SHAPE = dict(vocab_size=151936, hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64)
QUICK_SHAPE = {**SHAPE, "vocab_size": 32768, "hidden_size": 64, "intermediate_size": 128, "head_dim": 16}
PROMPT, BATCH = 100, 2
GOAL_MEMORY, GOAL_TIME = 0.5, 1.1  # peak extra <= 0.5 x one fp32 [b, L, V]; time <= 1.1 x full


# ---------------------------------------------------------------- the oracle: full-vocabulary objectives

def full_logits_t3d_micro_step(model, ref_model, batch, epoch, s):
    """The T3D micro-step as it was before t3d.train.token_logprobs: whole [b, L, V] logits and log-probs."""
    noise = noising.t3d_noise(batch, epoch, s.seed, s.block_size, s.mask_id, s.mask_strategy, s.mask_ratios,
                              s.mask_ratio_exponent, s.random_ratio, s.vocab_ids)
    real, masked = batch["response_ids"], noise["masked"]
    with torch.no_grad():
        ref_logits = noisy_logits(ref_model, batch, noise["noisy"], s.block_size)
        u = noising.uniform(s.seed, epoch, noising.FAKE_SAMPLE, batch["index"], real.shape[1])
        fake = losses.fake_tokens(ref_logits, s.reference_temp, u)
        ref_logp = torch.log_softmax(ref_logits.float(), -1)
        ref_real = losses.masked_mean(losses.token_logp(ref_logp, real), masked)
        ref_fake = losses.masked_mean(losses.token_logp(ref_logp, fake), masked)
        del ref_logits, ref_logp
    logp = torch.log_softmax(noisy_logits(model, batch, noise["noisy"], s.block_size).float(), -1)
    tok_real = losses.token_logp(logp, real)
    ddo, ddo_real, ddo_fake = losses.ddo_loss(
        losses.masked_mean(tok_real, masked), ref_real, losses.masked_mean(losses.token_logp(logp, fake), masked),
        ref_fake, s.alpha, s.beta)
    real_pos = torch.arange(real.shape[1], device=real.device)[None] < batch["real_len"][:, None]
    path = losses.path_loss(-tok_real, noise["rank"], real_pos, s.path_k_steps, s.block_size)
    loss = ddo + s.lambda_path * path
    return loss, {"loss": loss, "ddo_real": ddo_real, "ddo_fake": ddo_fake, "path": path}


def full_logits_sft_loss(model, batch, epoch, seed, block_size, mask_id):
    """The SFT masked CE as it was: log_softmax of the whole [b, L, V] logits."""
    noise = noising.sft_noise(batch, epoch, seed, block_size, mask_id)
    logits = noisy_logits(model, batch, noise["noisy"], block_size)
    target_logp = losses.token_logp(torch.log_softmax(logits.float(), -1), batch["response_ids"])
    return losses.masked_ce(target_logp, noise["masked"])


MICRO_STEPS = {"full": full_logits_t3d_micro_step, "chunked": t3d_micro_step}


# ---------------------------------------------------------------- setup and one step

def setup(length, shape, seed=0):
    """Target, frozen reference, a batch of BATCH x (PROMPT prompt + `length` response tokens), settings."""
    from t3d.model.sdar import SDARConfig, SDARForCausalLM

    vocab = shape["vocab_size"]
    config = SDARConfig(**shape, max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=0,
                        eos_token_id=1, mask_token_id=vocab - 1, block_size=4)
    torch.manual_seed(seed)
    target = SDARForCausalLM(config).train()
    ref = copy.deepcopy(target).requires_grad_(False).eval()
    g = torch.Generator().manual_seed(seed + 1)
    examples = [{"index": i, "prompt_ids": torch.randint(2, vocab - 1, (PROMPT,), generator=g).tolist(),
                 "response_ids": torch.randint(2, vocab - 1, (length,), generator=g).tolist(), "real_len": length,
                 "step_map": C.trajectory_step_map(PROMPT, length, 4, 4, g)} for i in range(BATCH)]
    batch = Collate(0)(examples)
    settings = T3DSettings(seed=10086, block_size=4, mask_id=vocab - 1, vocab_ids=torch.arange(2, vocab - 1),
                           path_k_steps=2)
    return target, ref, batch, settings


def make_step(name, target, ref, batch, settings):
    micro = MICRO_STEPS[name]

    def step():
        target.zero_grad(set_to_none=False)  # buffers stay allocated, as under DDP / DeepSpeed
        loss = micro(target, ref, batch, 0, settings)[0]
        loss.backward()
        return loss.detach()

    return step


def child(args):
    """One variant and length in a fresh process: a warm-up step allocates the gradients, then one measured step."""
    target, ref, batch, settings = setup(args.length, QUICK_SHAPE if args.quick else SHAPE)
    step = make_step(args.child, target, ref, batch, settings)
    step()
    _, memory = C.measure_peak(step)
    print(C.json.dumps({"variant": args.child, "length": args.length, **memory}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024], help="response tokens")
    p.add_argument("--memory-runs", type=int, default=1, help="fresh subprocesses per variant and length")
    p.add_argument("--quick", action="store_true", help="smoke run: small vocab/width, 32 tokens, nothing written")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    C.add_common_args(p, repeats=3)
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.repeats, args.memory_runs = [32], 1, 1
    info = C.start(args)
    if args.child:
        return child(args)
    shape = QUICK_SHAPE if args.quick else SHAPE
    vocab = shape["vocab_size"]

    rows, results = [], []
    for length in args.lengths:
        target, ref, batch, settings = setup(length, shape)
        targets = {n: copy.deepcopy(target) for n in VARIANTS}
        steps = {n: make_step(n, targets[n], ref, batch, settings) for n in VARIANTS}
        times, walls, last = C.interleaved(steps, args.repeats, warmup=1, clock=args.clock)
        loss = {n: last[n].item() for n in VARIANTS}
        assert abs(loss["full"] - loss["chunked"]) <= 1e-5 * max(1.0, abs(loss["full"])), loss
        memory = {n: [] for n in VARIANTS}
        for _ in range(args.memory_runs):
            for n in VARIANTS:
                child_args = ["--child", n, "--length", length, "--threads", args.threads] + ["--quick"] * args.quick
                memory[n].append(C.run_child(Path(__file__), child_args))
        peak = {n: C.median([m["peak_extra_mib"] for m in memory[n]]) for n in VARIANTS}
        med = {n: C.median(times[n]) for n in VARIANTS}
        blv = BATCH * length * vocab * 4 / 2**20  # one fp32 [b, L, V] tensor
        rows.append([length, blv, peak["full"], peak["full"] / blv, peak["chunked"], peak["chunked"] / blv,
                     med["full"], med["chunked"], med["chunked"] / med["full"]])
        results.append({"length": length, "fp32_blv_mib": blv, "peak_extra_mib": peak, "memory_runs": memory,
                        "seconds": times, "wall_seconds": walls, "median_s": med, "loss": loss})
        del target, ref, targets, steps

    headers = ["response tokens", "fp32 [b, L, V] MiB", "full: peak extra MiB", "full / [b,L,V]",
               "chunked: peak extra MiB", "chunked / [b,L,V]", f"full s/step ({args.clock})",
               f"chunked s/step ({args.clock})", "time chunked / full"]
    head_grad = shape["vocab_size"] * shape["hidden_size"] * 4 / 2**20
    mem_met = all(r[5] <= GOAL_MEMORY for r in rows)
    time_met = all(r[8] <= GOAL_TIME for r in rows)

    def where(ok):  # the response lengths (column 0) at which a goal is met
        met = [r[0] for r in rows if ok(r)]
        return "met at every length" if len(met) == len(rows) else (
            f"met at {', '.join(f'{n:,}' for n in met)} tokens only" if met else "missed at every length")
    notes = [
        f"Random SDAR: vocab {vocab:,}, {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, untied "
        f"head, fp32; micro-batch {BATCH}, {PROMPT}-token prompts, trace masks, greedy fake tokens; median of "
        f"{args.repeats} interleaved micro-steps (forwards + backward), {args.clock} time; identical losses checked.",
        f"Goals: chunked peak extra <= {GOAL_MEMORY} x one fp32 [b, L, V] ({where(lambda r: r[5] <= GOAL_MEMORY)}), "
        f"time <= {GOAL_TIME} x full ({where(lambda r: r[8] <= GOAL_TIME)}).",
        f"The chunked step's floor is parameter-sized, not token-sized: backward sums the head's weight gradient "
        f"over chunks in one V x H buffer ({head_grad:.0f} MiB fp32 here) beside the chunk being added; the rest "
        f"is a few [chunk, V] fp32 buffers (chunk = {chunk_positions(vocab)} positions).",
        "Memory: " + C.MEMORY_METHOD,
    ]
    payload = {"shape": shape, "batch": BATCH, "prompt": PROMPT, "rows": results, "goal_memory": GOAL_MEMORY,
               "goal_time": GOAL_TIME, "memory_goal_met": mem_met, "time_goal_met": time_met,
               "memory_method": C.MEMORY_METHOD}
    C.report("loss_memory", "T3D micro-step: full-vocabulary log-probs vs chunked head", info,
             [("", C.markdown_table(headers, rows))], notes, payload, args.out, write=not args.quick)


if __name__ == "__main__":
    main()

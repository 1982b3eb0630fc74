"""Loss memory: peak extra memory and time of one T3D micro-step, full-vocabulary log-probs vs the chunked head.

    python -m benchmarks.bench_loss_memory [--rows 256:2:256 2048:1:512 2560:1:512] [--repeats 0]
                                           [--memory-runs 1] [--quick]

full:    the objective as it was: `log_softmax(logits.float())` of the whole [b, L, V] for the reference and the
         target (`full_logits_t3d_micro_step`, kept here and in the tests as the oracle).
chunked: `t3d.train.objectives.t3d_micro_step`: LM head + log-probs a chunk of positions at a time
         (`t3d.train.token_logprobs`, default budget: one chunk of fp32 logits <= 32 MiB).

A row is HIDDEN:LAYERS:LENGTH (response tokens): random SDAR with SDAR's vocabulary (151,936), untied head, fp32,
the layer shape of SDAR-1.7B at hidden 2048 and of SDAR-4B at 2560; micro-batch 2, 100-token prompts, every
response exactly LENGTH tokens, B=4, trace masks, greedy fake tokens.

Work measured = one micro-step as the trainer runs it: reference forward (no grad), target forward, backward,
with the gradient buffers already allocated by a warm-up step (DDP and DeepSpeed keep them between steps), so
the number is the step's extra memory, not the first allocation of .grad. Memory: see `common.MEMORY_METHOD`,
one fresh subprocess per variant and row, which also reports the measured step's time and loss. Time: with
--repeats N > 0 the median of N micro-steps, the two variants interleaved in one process on the same weights
and batch; with --repeats 0 the memory subprocesses' single measured step (no extra steps: at hidden 2,560 a
step is about a minute on one core). The two variants' losses are checked equal either way.
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
VOCAB = 151936
LAYER_SHAPES = {  # hidden -> the rest of a layer: the benchmark's small model, SDAR-1.7B's, SDAR-4B's
    256: dict(intermediate_size=768, num_attention_heads=4, num_key_value_heads=2, head_dim=64),
    2048: dict(intermediate_size=6144, num_attention_heads=16, num_key_value_heads=8, head_dim=128),
    2560: dict(intermediate_size=9728, num_attention_heads=32, num_key_value_heads=8, head_dim=128),
}
ROWS = ("256:2:256", "2048:1:512", "2560:1:512")
QUICK_SHAPE = dict(vocab_size=32768, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16)
QUICK_LENGTH = 32
PROMPT, BATCH = 100, 2
# Goals, per row (hidden, layers, length): chunked peak extra <= 0.5 x one fp32 [b, L, V] at hidden 256;
# <= 0.5 x the full-logits step's peak extra at hidden 2,048 (there the head's [V, H] gradient outweighs [b, L, V]).
GOALS = {(256, 2, 256): ("blv", 0.5), (2048, 1, 512): ("full", 0.5)}


def row_shape(hidden, layers):
    return dict(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, **LAYER_SHAPES[hidden])


def parse_row(text):
    hidden, layers, length = (int(x) for x in text.split(":"))
    if hidden not in LAYER_SHAPES:
        raise argparse.ArgumentTypeError(f"hidden {hidden}: one of {sorted(LAYER_SHAPES)}")
    return hidden, layers, length


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
    """Target, frozen reference, a batch of BATCH x (PROMPT prompt + `length` response tokens), settings.

    The reference shares the target's weight storage (it equals the target at this step): a second copy would
    only raise the baseline, by 3.3 GB at hidden 2,560, on a machine other jobs share."""
    from t3d.model.sdar import SDARConfig, SDARForCausalLM

    vocab = shape["vocab_size"]
    config = SDARConfig(**shape, max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=0,
                        eos_token_id=1, mask_token_id=vocab - 1, block_size=4)
    torch.manual_seed(seed)
    target = SDARForCausalLM(config).train()
    shared = {id(p): torch.nn.Parameter(p.detach(), requires_grad=False) for p in target.parameters()}
    ref = copy.deepcopy(target, memo=shared).eval()
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
    """One variant and row in a fresh process: a warm-up step allocates the gradients, then one measured step."""
    shape = QUICK_SHAPE if args.quick else row_shape(args.hidden, args.layers)
    target, ref, batch, settings = setup(args.length, shape)
    step = make_step(args.child, target, ref, batch, settings)
    step()
    assert all(p.grad is not None for p in target.parameters())  # the measured step adds into them
    # The high-water mark when backward reaches the input embedding (its output's gradient is ready): the
    # step's peak apart from the embedding's own dense [V, H] weight gradient, which comes last.
    before_embedding = []

    def on_embedding_output(module, inputs, out):
        if out.requires_grad:  # the target's forward, not the reference's
            out.register_hook(lambda grad: before_embedding.append(C.maxrss_mib()))

    target.get_input_embeddings().register_forward_hook(on_embedding_output)
    (seconds, _, loss), memory = C.measure_peak(lambda: C.timed(step, args.clock))
    memory["peak_extra_before_embedding_backward_mib"] = before_embedding[-1] - memory["rss_before_mib"]
    print(C.json.dumps({"variant": args.child, "length": args.length, "seconds": seconds, "loss": loss.item(),
                        **memory}))


def measure_row(args, hidden, layers, length, shape):
    """Memory (fresh subprocesses, nothing held here meanwhile), then the optional interleaved timing."""
    memory = {n: [] for n in VARIANTS}
    for _ in range(args.memory_runs):
        for n in VARIANTS:
            child_args = ["--child", n, "--hidden", hidden, "--layers", layers, "--length", length,
                          "--threads", args.threads, "--clock", args.clock] + ["--quick"] * args.quick
            memory[n].append(C.run_child(Path(__file__), child_args, timeout=1800))
    loss = {n: memory[n][-1]["loss"] for n in VARIANTS}
    times = walls = None
    if args.repeats > 0:
        target, ref, batch, settings = setup(length, shape)
        steps = {n: make_step(n, target, ref, batch, settings) for n in VARIANTS}  # zero_grad between variants
        times, walls, last = C.interleaved(steps, args.repeats, warmup=1, clock=args.clock)
        loss = {n: last[n].item() for n in VARIANTS}
        del target, ref, steps
    assert abs(loss["full"] - loss["chunked"]) <= 1e-5 * max(1.0, abs(loss["full"])), loss
    seconds = times or {n: [m["seconds"] for m in memory[n]] for n in VARIANTS}
    return memory, loss, times, walls, {n: C.median(seconds[n]) for n in VARIANTS}


def sizes_mib(shape, length):
    """(one fp32 [V, H], one fp32 [b, L, V]) in MiB: the head's weight (gradient) and the full logits."""
    vh = shape["vocab_size"] * shape["hidden_size"] * 4 / 2**20
    blv = BATCH * length * shape["vocab_size"] * 4 / 2**20
    return vh, blv


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=parse_row, nargs="+", default=[parse_row(r) for r in ROWS],
                   help="HIDDEN:LAYERS:LENGTH, LENGTH = response tokens; hidden one of " + str(sorted(LAYER_SHAPES)))
    p.add_argument("--memory-runs", type=int, default=1, help="fresh subprocesses per variant and row")
    p.add_argument("--quick", action="store_true", help="smoke run: small vocab/width, 32 tokens, nothing written")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, help=argparse.SUPPRESS)
    p.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    C.add_common_args(p, repeats=0)
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.memory_runs = [(QUICK_SHAPE["hidden_size"], QUICK_SHAPE["num_hidden_layers"], QUICK_LENGTH)], 1
    info = C.start(args)
    if args.child:
        return child(args)

    rows, results, floors = [], [], []
    for hidden, layers, length in args.rows:
        shape = QUICK_SHAPE if args.quick else row_shape(hidden, layers)
        vocab = shape["vocab_size"]
        memory, loss, times, walls, med = measure_row(args, hidden, layers, length, shape)
        peak = {n: C.median([m["peak_extra_mib"] for m in memory[n]]) for n in VARIANTS}
        head = C.median([m["peak_extra_before_embedding_backward_mib"] for m in memory["chunked"]])
        vh, blv = sizes_mib(shape, length)
        rows.append([hidden, layers, length, blv, vh, peak["full"], peak["full"] / blv, peak["chunked"],
                     peak["chunked"] / blv, peak["chunked"] / peak["full"], head, med["chunked"] / med["full"]])
        results.append({"hidden": hidden, "layers": layers, "length": length, "shape": shape, "fp32_blv_mib": blv,
                        "fp32_vh_mib": vh, "peak_extra_mib": peak, "chunked_before_embedding_backward_mib": head,
                        "memory_runs": memory, "seconds": times, "wall_seconds": walls, "median_s": med,
                        "loss": loss})
        floors.append((hidden, layers, length, vh, blv, peak, head))

    headers = ["hidden", "layers", "response tokens", "fp32 [b,L,V] MiB", "fp32 [V,H] MiB", "full: peak extra MiB",
               "full / [b,L,V]", "chunked: peak extra MiB", "chunked / [b,L,V]", "chunked / full",
               "chunked: peak before embedding backward MiB", "time chunked / full"]
    goals = []
    for hidden, layers, length in args.rows:
        kind, limit = GOALS.get((hidden, layers, length), (None, None))
        if kind is None or args.quick:
            continue
        r = rows[args.rows.index((hidden, layers, length))]
        value, floor = (r[8], r[4] / r[3]) if kind == "blv" else (r[9], r[4] / r[5])  # floor: one fp32 [V, H]
        goals.append({"hidden": hidden, "layers": layers, "length": length, "of": kind, "limit": limit,
                      "value": value, "met": value <= limit, "floor": floor})
    timing = (f"median of {args.repeats} interleaved micro-steps in one process" if args.repeats > 0 else
              "one measured micro-step per variant, in its memory subprocess")
    notes = [
        f"Random SDAR: vocab {QUICK_SHAPE['vocab_size'] if args.quick else VOCAB:,}, untied head, fp32 (layer "
        f"shape of SDAR-1.7B at hidden 2,048, SDAR-4B at 2,560); micro-batch {BATCH}, {PROMPT}-token prompts, "
        f"trace masks, greedy fake tokens; gradients allocated by a warm-up step before the measured one; time: "
        f"{timing}, {args.clock} time; identical losses checked.",
    ]
    for g in goals:
        what = "one fp32 [b, L, V]" if g["of"] == "blv" else "the full-logits step"
        notes.append(f"Goal at hidden {g['hidden']:,}, {g['layers']} layer(s), L={g['length']}: chunked peak extra "
                     f"<= {g['limit']} x {what}: {g['value']:.3f} x, {'met' if g['met'] else 'missed'}; floor "
                     f"{g['floor']:.3f} x (the embedding's dense [V, H] gradient, see below).")
    for hidden, layers, length, vh, blv, peak, head in floors:
        notes.append(
            f"Floor at hidden {hidden:,}, L={length:,}: the input embedding's backward builds its dense [V, H] "
            f"weight gradient ({vh:,.0f} MiB fp32 = {vh / blv:.3f} x one fp32 [b, L, V]) before autograd adds it "
            f"into .grad, last in the step and in both variants (outside the LM head). The chunked head adds its "
            f"own weight gradient into .grad in place; the step's peak before the embedding's backward (saved "
            f"activations + one [chunk, V] logits and log-probs pair, chunk = {chunk_positions(vocab)} positions, "
            f"32 MiB each) is {head:,.0f} MiB, so the chunked peak is {peak['chunked']:,.0f} MiB = "
            f"max({head:,.0f}, {vh:,.0f} + {max(0.0, peak['chunked'] - vh):,.0f}). Adding the embedding's "
            f"gradient into .grad in place too (index_add_, a change to the model's input path, not the head) "
            f"would leave the {head:,.0f} MiB.")
    notes.append("Memory: " + C.MEMORY_METHOD)
    payload = {"vocab_size": vocab, "batch": BATCH, "prompt": PROMPT, "rows": results, "goals": goals,
               "goals_met": all(g["met"] for g in goals), "memory_method": C.MEMORY_METHOD}
    C.report("loss_memory", "T3D micro-step: full-vocabulary log-probs vs chunked head", info,
             [("", C.markdown_table(headers, rows))], notes, payload, args.out, write=not args.quick)


if __name__ == "__main__":
    main()

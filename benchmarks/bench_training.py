"""Training-step cost: the toolkit's T3D step against a reference-style step, same model, batch, lengths.

    python -m benchmarks.bench_training [--repeats 7] [--threads 1] [--profile] [--quick]

toolkit:   `t3d.train.objectives.t3d_micro_step` = one reference forward (no grad) + one target forward;
           DDO real and fake terms and the path loss all read the one set of target logits.
reference: what the original does per micro-batch: the reference model twice (no grad) and the target
           twice (with gradients) on identical inputs -- once for the real tokens, once for the fake ones.
lora:      the toolkit step on a LoRA target (t3d.train.lora: PEFT adapters, rank --lora-r, alpha 2r, on every linear layer
           of the decoder layers); its reference is the same model with the adapters disabled (no copy).
All then run backward, gradient clipping and an AdamW step (over the adapters only for lora). All compute the
same loss at the start (checked; zero-initialised adapters leave the model unchanged).

Time: median seconds per optimizer step (one micro-batch), the variants interleaved in one process,
each with its own target copy and optimizer. Memory: see `common.MEMORY_METHOD` (one fresh subprocess
per variant), plus the bytes of the training state each variant holds (weights incl. the reference, gradients,
AdamW moments), counted from its tensors. A phase profile (torch.profiler) is always recorded; op-level hot
spots are added when the time ratio misses the goal or with --profile.
"""
import argparse
import copy
from pathlib import Path

import torch

from benchmarks import common as C
from t3d.model.masks import training_layout
from t3d.train import lora, losses, noising
from t3d.train.data import Collate
from t3d.train.objectives import T3DSettings, t3d_micro_step

GOAL = 0.55
VARIANTS = ("toolkit", "reference", "lora")


def reference_style_micro_step(model, ref_model, batch, epoch, s):
    """The original's cost structure on the toolkit's pieces: the layout is built once, then the reference
    runs twice without gradients and the target twice with gradients on the identical noisy input."""
    noise = noising.t3d_noise(batch, epoch, s.seed, s.block_size, s.mask_id, s.mask_strategy, s.mask_ratios,
                              s.mask_ratio_exponent, s.random_ratio, s.vocab_ids)
    real, masked = batch["response_ids"], noise["masked"]
    lay = training_layout(batch["prompt_ids"], batch["prompt_len"], batch["response_ids"], batch["response_len"],
                          noise["noisy"], s.block_size)

    def logits(m):
        return m(input_ids=lay["input_ids"], attention_mask=lay["attention_mask"], position_ids=lay["position_ids"],
                 logits_to_keep=lay["noisy_slice"]).logits

    with torch.no_grad():
        ref_logp = torch.log_softmax(logits(ref_model).float(), -1)  # pass 1: fake tokens + ref log p(real)
        u = noising.uniform(s.seed, epoch, noising.FAKE_SAMPLE, batch["index"], real.shape[1]) if s.reference_temp else None
        fake = losses.fake_tokens(ref_logp, s.reference_temp, u)
        ref_real = losses.masked_mean(losses.token_logp(ref_logp, real), masked)
        del ref_logp
        ref_logp = torch.log_softmax(logits(ref_model).float(), -1)  # pass 2: ref log p(fake)
        ref_fake = losses.masked_mean(losses.token_logp(ref_logp, fake), masked)
        del ref_logp
    tok_real = losses.token_logp(torch.log_softmax(logits(model).float(), -1), real)  # target pass 1 (grad)
    tok_fake = losses.token_logp(torch.log_softmax(logits(model).float(), -1), fake)  # target pass 2 (grad)
    ddo, _, _ = losses.ddo_loss(losses.masked_mean(tok_real, masked), ref_real, losses.masked_mean(tok_fake, masked),
                                ref_fake, s.alpha, s.beta)
    real_pos = torch.arange(real.shape[1], device=real.device)[None] < batch["real_len"][:, None]
    path = losses.path_loss(-tok_real, noise["rank"], real_pos, s.path_k_steps, s.block_size)
    return ddo + s.lambda_path * path


MICRO_STEPS = {
    "toolkit": lambda m, ref, batch, s: t3d_micro_step(m, ref, batch, 0, s)[0],
    "reference": lambda m, ref, batch, s: reference_style_micro_step(m, ref, batch, 0, s),
    "lora": lambda m, ref, batch, s: t3d_micro_step(m, ref, batch, 0, s)[0],
}


def lora_target(model, r):
    """The LoRA variant's target (adapters on a copy of `model`) and its reference (the same model, adapters off)."""
    from peft import LoraConfig

    torch.manual_seed(2)  # the adapters' A init
    config = LoraConfig(r=r, lora_alpha=2.0 * r, lora_dropout=0.0, target_modules=list(lora.TARGETS), bias="none")
    adapted = lora.add_adapters(copy.deepcopy(model), config, "bench")
    return adapted, lora.AdapterReference(adapted, rounds=False, every=1).at(0)


def variant(name, target, ref, r):
    """(target, reference) of one variant: a fresh copy of the target; the LoRA one shares no reference copy."""
    return lora_target(target, r) if name == "lora" else (copy.deepcopy(target), ref)


def state_mib(model, ref, optimizer):
    """MiB of weights (the reference's too, when it is another model), gradients and AdamW moments."""
    tensors = list(model.parameters()) + ([] if not isinstance(ref, torch.nn.Module) else list(ref.parameters()))
    tensors += [v for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0]
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.dtype, t.shape)  # tied weights count once
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    # gradients: one per trainable parameter at the step's peak (the step ends with zero_grad(set_to_none))
    total += sum(p.numel() * p.element_size() for p in optimizer.param_groups[0]["params"])
    return total / 2**20


def setup(args):
    """Target, frozen reference, a padded batch and the T3D settings; all a pure function of the seeds."""
    tok = C.tiny_tokenizer()
    vocab = C.plain_vocab(tok)
    target = C.random_sdar(tok, seed=0, **args.shape).train()
    ref = None if args.child == "lora" else copy.deepcopy(target).requires_grad_(False).eval()
    examples = C.synthetic_examples(args.batch, vocab, tok.eos_token_id, tok.pad_token_id, seed=1,
                                    prompt_range=(40, args.max_prompt), response_median=args.response_median,
                                    max_response=args.max_response)
    batch = Collate(tok.pad_token_id)(examples)
    settings = T3DSettings(seed=10086, block_size=4, mask_id=tok.mask_token_id, vocab_ids=vocab, path_k_steps=2)
    return target, ref, batch, settings


def make_step(name, target, ref, batch, settings):
    opt = torch.optim.AdamW([p for p in target.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.01)
    micro = MICRO_STEPS[name]

    def step():
        with torch.profiler.record_function("forwards+loss"):
            loss = micro(target, ref, batch, settings)
        with torch.profiler.record_function("backward"):
            loss.backward()
        with torch.profiler.record_function("clip+optimizer"):
            torch.nn.utils.clip_grad_norm_(target.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.detach()

    step.optimizer = opt
    return step


def child(args):
    """One variant in a fresh process: warm-up step (AdamW state exists after it), then the peak of one step."""
    target, ref, batch, settings = setup(args)
    if args.child == "lora":
        target, ref = lora_target(target, args.lora_r)
    step = make_step(args.child, target, ref, batch, settings)
    step()
    _, memory = C.measure_peak(step)
    print(C.json.dumps({"variant": args.child, **memory, "state_mib": state_mib(target, ref, step.optimizer)}))


def phase_profile(steps, rounds=2, top_ops=0):
    """Per variant: seconds per step in each phase (record_function) and optionally the top ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for name, step in steps.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(rounds):
                step()
        events = prof.key_averages()
        phases = {e.key: e.cpu_time_total / 1e6 / rounds for e in events
                  if e.key in ("forwards+loss", "backward", "clip+optimizer")}
        entry = {"phases_s": phases}
        if top_ops:
            ops = sorted((e for e in events if e.key not in phases), key=lambda e: -e.self_cpu_time_total)[:top_ops]
            entry["top_ops"] = [{"op": e.key, "self_s_per_step": e.self_cpu_time_total / 1e6 / rounds,
                                 "calls_per_step": e.count / rounds} for e in ops]
        out[name] = entry
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-prompt", type=int, default=120)
    p.add_argument("--max-response", type=int, default=256)
    p.add_argument("--response-median", type=int, default=200)
    p.add_argument("--memory-runs", type=int, default=2, help="fresh subprocesses per variant for peak memory")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank of the lora variant (alpha = 2r)")
    p.add_argument("--profile", action="store_true", help="always list the top ops")
    p.add_argument("--quick", action="store_true", help="smoke run: batch 2, short sequences, nothing written")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    C.add_common_args(p, repeats=7)
    args = p.parse_args(argv)
    args.shape = {}
    if args.quick:
        args.batch, args.max_prompt, args.max_response, args.response_median = 2, 48, 32, 24
        args.repeats, args.memory_runs = 2, 1
    info = C.start(args)
    if args.child:
        return child(args)

    target, ref, batch, settings = setup(args)
    pairs = {n: variant(n, target, ref, args.lora_r) for n in VARIANTS}
    # same weights, same batch: the objectives must agree before any step moves the copies apart
    losses_at_start = {n: MICRO_STEPS[n](*pairs[n], batch, settings).item() for n in VARIANTS}
    assert abs(losses_at_start["toolkit"] - losses_at_start["reference"]) < 1e-4 * max(1.0, abs(losses_at_start["toolkit"])), losses_at_start
    assert losses_at_start["lora"] == losses_at_start["toolkit"], losses_at_start  # B = 0: the same model
    steps = {n: make_step(n, *pairs[n], batch, settings) for n in VARIANTS}
    times, walls, _ = C.interleaved(steps, args.repeats, warmup=1, clock=args.clock)
    med = {n: C.median(times[n]) for n in VARIANTS}
    ratio = med["toolkit"] / med["reference"]
    profile = phase_profile(steps, top_ops=15 if (args.profile or ratio > GOAL) else 0)

    memory = {n: [] for n in VARIANTS}
    for _ in range(args.memory_runs):  # alternate, a fresh process each
        for n in VARIANTS:
            child_args = ["--child", n, "--threads", args.threads, "--batch", args.batch, "--max-prompt", args.max_prompt,
                          "--max-response", args.max_response, "--response-median", args.response_median,
                          "--lora-r", args.lora_r]
            memory[n].append(C.run_child(Path(__file__), child_args))
    peak = {n: C.median([m["peak_extra_mib"] for m in memory[n]]) for n in VARIANTS}
    state = {n: memory[n][0]["state_mib"] for n in VARIANTS}  # counted, the same in every run
    trainable = {n: sum(p.numel() for p in pairs[n][0].parameters() if p.requires_grad) for n in VARIANTS}

    n_tokens = int(batch["prompt_len"].sum() + batch["response_len"].sum())
    layout_cols = batch["prompt_ids"].shape[1] + 2 * batch["response_ids"].shape[1] + 3
    rows = [[n, med[n], min(times[n]), C.median(walls[n]), peak[n], state[n], trainable[n]] for n in VARIANTS]
    for a, b in (("toolkit", "reference"), ("lora", "toolkit")):
        rows.append([f"{a} / {b}", med[a] / med[b], min(times[a]) / min(times[b]),
                     C.median(walls[a]) / C.median(walls[b]), peak[a] / peak[b], state[a] / state[b],
                     trainable[a] / trainable[b]])
    headers = ["step", f"s/step ({args.clock}, median)", "s/step (min)", "wall s/step (median)", "peak extra MiB",
               "weights+grads+AdamW MiB", "trainable params"]
    phases = ("forwards+loss", "backward", "clip+optimizer")
    ph = {n: profile[n]["phases_s"] for n in VARIANTS}
    phase_rows = [[k, ph["toolkit"].get(k, 0.0), ph["reference"].get(k, 0.0), ph["lora"].get(k, 0.0),
                   ph["toolkit"].get(k, 0.0) / max(ph["reference"].get(k, 0.0), 1e-12),
                   ph["lora"].get(k, 0.0) / max(ph["toolkit"].get(k, 0.0), 1e-12)] for k in phases]
    total = {n: sum(ph[n].values()) for n in VARIANTS}
    phase_rows.append(["total", total["toolkit"], total["reference"], total["lora"],
                       total["toolkit"] / max(total["reference"], 1e-12), total["lora"] / max(total["toolkit"], 1e-12)])
    shape = C.model_shape(target)
    notes = [
        f"Random SDAR of the embedded default's shape ({shape['layers']} layers, hidden {shape['hidden_size']}, "
        f"vocab {shape['vocab']}, {shape['params_M']}M params, fp32); micro-batch {args.batch} "
        f"({n_tokens} prompt+response tokens, layout {layout_cols} columns), B=4, trace masks; "
        f"median of {args.repeats} interleaved steps, {args.clock} time.",
        f"Time ratio toolkit/reference = {ratio:.3f} (goal <= {GOAL}: {'met' if ratio <= GOAL else 'MISSED'}).",
        f"Loss check at identical weights: toolkit {losses_at_start['toolkit']:.6f}, reference-style "
        f"{losses_at_start['reference']:.6f}, lora {losses_at_start['lora']:.6f} (equal to toolkit's, bit for bit).",
        f"lora: rank {args.lora_r}, alpha {2 * args.lora_r}, on {', '.join(lora.TARGETS)}; trains "
        f"{trainable['lora']} of {trainable['toolkit']} parameters; its reference is the same model with the adapters "
        "disabled. At this size activations dominate the step's peak and the adapters' extra matmuls are not "
        "small next to the tiny layers, so the time ratio says little about SDAR-4B/8B (see the README's arithmetic); "
        "times are from a shared 2-core machine and noisy.",
        "Memory: " + C.MEMORY_METHOD,
    ]
    tables = [("", C.markdown_table(headers, rows)),
              ("Where the time goes (torch.profiler, CPU s per step, profiler overhead included):",
               C.markdown_table(["phase", "toolkit", "reference", "lora", "toolkit / reference", "lora / toolkit"],
                               phase_rows))]
    hot = {n: profile[n].get("top_ops") for n in VARIANTS if profile[n].get("top_ops")}
    for n, ops in hot.items():
        tables.append((f"Top ops by self CPU time, {n} step:", C.markdown_table(
            ["op", "self s/step", "calls/step"], [[o["op"], o["self_s_per_step"], o["calls_per_step"]] for o in ops[:10]])))
    payload = {"model": shape, "batch_size": args.batch, "tokens": n_tokens, "layout_columns": layout_cols,
               "repeats": args.repeats, "seconds": times, "wall_seconds": walls, "median_s": med, "ratio": ratio, "goal": GOAL,
               "goal_met": ratio <= GOAL, "loss_at_start": losses_at_start, "memory_runs": memory,
               "peak_extra_mib": peak, "state_mib": state, "trainable_params": trainable, "lora_r": args.lora_r,
               "memory_method": C.MEMORY_METHOD, "profile": profile}
    C.report("training", "Training step: toolkit T3D vs reference-style, and the LoRA step", info, tables, notes,
             payload, args.out,
             write=not args.quick)


if __name__ == "__main__":
    main()

"""Decoding an adapter checkpoint against decoding its base: the same prompts, same process, SDAR-4B's shape.

    python -m benchmarks.bench_adapter_decoding [--layers 2] [--repeats 3] [--old-head]

Builds a random-weight checkpoint from the SDAR-4B-Chat release files (`t3d.model.random_release`: real
hidden size, heads, vocabulary 151,936, tokenizer and chat template; `--layers` decoder layers, bf16) and a
LoRA adapter for it (r=16 on all seven decoder linears, non-zero B, so merging changes every targeted
weight), loads both through `t3d.model.checkpoint.load` in bf16 as eval does (the adapter is merged, every
weight frozen; SDPA attention) and decodes the same chat prompts with each, interleaved. Goal: adapter / base <= 1.15.
`--old-head` also times one forward with the head applied as it was before (to the strided 3-D slice of
the kept positions), which a frozen head weight sent through bmm on a per-row expanded copy of it.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks import common as C
from t3d.decode.decoder import DecodeConfig, generate
from t3d.model.checkpoint import load, stop_token_ids
from t3d.model.random_release import build_random_checkpoint

RELEASE = C.ROOT.parent / "shared" / "sdar-release-files" / "SDAR-4B-Chat"
QUESTIONS = ("Compute 47+38.", "What is the product of 12 and 9?", "A train travels 60 km in 45 minutes. Speed?",
             "Simplify (x^2 - 1) / (x - 1).")


def write_adapter(base_dir, out, rank=16, seed=0):
    from peft import LoraConfig, get_peft_model

    from t3d.train.lora import TARGETS

    model, _, _ = load(str(base_dir), "bf16")
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(TARGETS)))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B = 0 after init: a merge would change nothing
                p.copy_(torch.randn(p.shape, generator=generator) * 0.01)
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(out)
    return out


def prompts_for(tokenizer, n):
    from t3d.tasks.prompting import build_prompt, encode_prompt

    return [encode_prompt(tokenizer, build_prompt(tokenizer, {"question": QUESTIONS[i % len(QUESTIONS)]}, "math"))
            for i in range(n)]


def old_head_forward(model, ids, keep):
    """One forward with the head on the strided slice, as SDARForCausalLM applied it before."""
    hidden = model.model(input_ids=ids).last_hidden_state
    return model.lm_head(hidden[:, -keep:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.add_common_args(parser, repeats=3)
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the real-shape model")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per block of 4")
    parser.add_argument("--old-head", action="store_true", help="also time one forward with the old head path")
    parser.add_argument("--quick", action="store_true", help="1 layer, 8 tokens, 1 repeat; nothing written")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.new_tokens, args.repeats = 1, 8, 1
    if not (RELEASE / "config.json").is_file():
        sys.exit(f"{RELEASE}: the SDAR-4B-Chat release files are missing (../shared/sdar-release-files)")
    info = C.start(args)
    with tempfile.TemporaryDirectory(prefix="bench-adapter-") as tmp:
        base_dir = build_random_checkpoint(RELEASE, Path(tmp) / "base", args.layers)
        adapter_dir = write_adapter(base_dir, Path(tmp) / "adapter")
        base, tokenizer, _ = load(str(base_dir), "bf16", attn_implementation="sdpa")
        adapter, _, _ = load(str(adapter_dir), "bf16", attn_implementation="sdpa")
        assert not torch.equal(base.model.layers[0].mlp.up_proj.weight, adapter.model.layers[0].mlp.up_proj.weight)
        assert not any(p.requires_grad for p in adapter.parameters())  # the case that used to hit bmm
        prompts = prompts_for(tokenizer, args.batch)
        cfg = DecodeConfig(block_size=4, steps_per_block=args.steps, max_new_tokens=args.new_tokens,
                           temperature=0.0, stop_at_eos=False)
        stops = stop_token_ids(tokenizer)

        def decode(model):
            return lambda: generate(model, prompts, cfg, mask_id=tokenizer.mask_token_id,
                                    pad_id=tokenizer.pad_token_id, stop_ids=stops)

        with torch.no_grad():
            times, walls, outs = C.interleaved({"base": decode(base), "adapter": decode(adapter)}, args.repeats,
                                               warmup=1, clock=args.clock)
            old = None
            if args.old_head:
                ids = torch.randint(0, 151000, (args.batch, 36), generator=torch.Generator().manual_seed(0))
                old = {name: C.timed(fn, args.clock)[0] for name, fn in (
                    ("new", lambda: adapter(input_ids=ids, logits_to_keep=4)),
                    ("old", lambda: old_head_forward(adapter, ids, 4)))}
    nfe = sum(outs["base"].nfe) / len(prompts)
    base_s, adapter_s = C.median(times["base"]), C.median(times["adapter"])
    rows = [["base", base_s, args.new_tokens * args.batch / base_s, nfe, 1.0],
            ["adapter (merged)", adapter_s, args.new_tokens * args.batch / adapter_s,
             sum(outs["adapter"].nfe) / len(prompts), adapter_s / base_s]]
    tables = [(None, C.markdown_table(["checkpoint", "s / decode", "tok/s", "forwards / seq", "time / base"], rows))]
    notes = [f"SDAR-4B-Chat shape with {args.layers} layers ({sum(p.numel() for p in base.parameters()) / 1e9:.2f} B "
             f"parameters, bf16), batch {args.batch}, {args.new_tokens} new tokens, B=4, S={args.steps}, greedy, "
             f"EOS ignored; median of {args.repeats} interleaved rounds ({args.clock} time)",
             f"adapter / base = {adapter_s / base_s:.3f} (goal <= 1.15)"]
    if old:
        notes.append(f"one forward of the adapter model ([{args.batch}, 36] tokens, last 4 kept): head on contiguous "
                     f"2-D rows {old['new']:.2f} s, head on the strided 3-D slice (before) {old['old']:.2f} s")
    C.report("adapter_decoding", "Adapter vs base decoding (SDAR-4B shape, bf16)", info, tables, notes,
             payload={"times": times, "walls": walls, "ratio": adapter_s / base_s, "old_head": old,
                      "layers": args.layers, "batch": args.batch, "new_tokens": args.new_tokens},
             out_dir=args.out, write=not args.quick)


if __name__ == "__main__":
    main()

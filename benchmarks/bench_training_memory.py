"""Host memory of setting up T3D training at SDAR-4B's shape: peak RSS per parameter, LoRA and full T3D.

    python -m benchmarks.bench_training_memory [--layers 2] [--quick]

A random-weight checkpoint is built from the SDAR-4B-Chat release files (`t3d.model.random_release`: hidden
2,560, 32/8 heads, vocabulary 151,936, bf16 on disk, `--layers` layers). Each variant runs in a fresh process
(`common.MEMORY_METHOD`: RSS high-water mark from after the imports) and does what the trainer does before and
in its first step with training.mixed_precision=bf16: load the target and the reference
(`t3d.train.self_ddo.training_models`), AdamW over the trainable parameters, one forward + backward under bf16
autocast on 16 tokens and one optimizer step (so gradients and AdamW state exist). Peak extra RSS / parameters
of the model = bytes per parameter. Goals: LoRA (bf16 base) <= 2.6, full T3D <= 19 (fp32 master 4 + grads 4 +
AdamW 8 + bf16 reference 2). `full_fused`: the same with AdamW(fused=True), whose step needs no temporary the
size of the largest parameter (the for-loop AdamW torch uses on CPU allocates one per parameter, and at 2 layers
the embedding and head are 80% of the model). The `old` variants load as the trainers did before: fp32, then
cast (LoRA) or deep-copy and cast (the full reference). `--variants` picks some (full T3D at 2 layers peaks near
20 GB).
"""
import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

from benchmarks import common as C

RELEASE = C.ROOT.parent / "shared" / "sdar-release-files" / "SDAR-4B-Chat"
VARIANTS = ("lora", "full", "full_fused", "old_lora", "old_full")


def training_cfg(path, lora_rank):
    from t3d.common.config import load_config
    from t3d.common.paths import CONFIGS

    overrides = [f"model.pretrained_model={path}", "training.mixed_precision=bf16"]
    if lora_rank:
        overrides.append(f"model.lora.r={lora_rank}")
    return load_config([f"config={CONFIGS / 'ddo_sdar_full_self.yaml'}", *overrides])


def old_models(cfg, path, lora_on):
    """As the trainers loaded before: the target in fp32, then cast (LoRA base) or deep-copied and cast (reference)."""
    import torch

    from t3d.model.checkpoint import load_model
    from t3d.train import lora

    model = load_model(path, "fp32", "cpu").train()
    if lora_on:
        return lora.add_adapters(model, lora.lora_config(cfg), str(path), snapshot=True, bf16_base=True), None
    return model, copy.deepcopy(model).requires_grad_(False).eval().to(torch.bfloat16)


def child(args):
    import torch

    from t3d.train.optim import make_optimizer
    from t3d.train.self_ddo import training_models

    C.set_threads(args.threads)
    lora_on = args.variant in ("lora", "old_lora")
    cfg = training_cfg(args.checkpoint, 16 if lora_on else None)
    vocab = json.loads((Path(args.checkpoint) / "config.json").read_text())["vocab_size"]
    ids = torch.randint(0, vocab, (1, 16), generator=torch.Generator().manual_seed(0))

    def work():
        if args.variant.startswith("old_"):
            model, ref = old_models(cfg, args.checkpoint, lora_on)
        else:
            model, ref, _ = training_models(cfg, args.checkpoint)
        optimizer = make_optimizer(model, cfg, 1e-5)
        if args.variant.endswith("_fused"):  # the same AdamW, fused: no temporary the size of the largest parameter
            group = optimizer.param_groups[0]
            optimizer = torch.optim.AdamW(group["params"], lr=group["lr"], betas=group["betas"], eps=group["eps"],
                                          weight_decay=group["weight_decay"], fused=True)
        phases = {"loaded": C.current_rss_mib()}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if ref is not None and not lora_on:
                with torch.no_grad():
                    ref(input_ids=ids)
            loss = model(input_ids=ids).logits.float().mean()
            phases["forward_peak"] = C.maxrss_mib()
        loss.backward()
        phases["backward_peak"] = C.maxrss_mib()
        optimizer.step()
        phases["step_peak"] = C.maxrss_mib()
        return {k: round(v - before, 1) for k, v in phases.items()}

    C.reset_peak_rss()
    before = C.current_rss_mib()
    phases, mem = C.measure_peak(work)
    print(json.dumps({**mem, "phases_mib": phases}))


def model_params(path):
    import math

    from t3d.model.checkpoint import expected_tensors

    config = json.loads((Path(path) / "config.json").read_text())
    return sum(math.prod(s) for s in expected_tensors(config).values())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    C.add_common_args(parser, repeats=1)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="1 layer, new-code variants only; nothing written")
    parser.add_argument("--name", default="training_memory", help="results file name")
    parser.add_argument("--vocab", type=int, default=None, help="override the vocabulary (full T3D at 151,936 and "
                        "2 layers needs ~20 GB)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.quick:
        args.layers, args.variants = 1, "lora,full"
    if not (RELEASE / "config.json").is_file():
        sys.exit(f"{RELEASE}: the SDAR-4B-Chat release files are missing (../shared/sdar-release-files)")
    from t3d.model.random_release import build_random_checkpoint

    info = C.start(args)
    rows, payload = [], {"layers": args.layers, "vocab": args.vocab or 151936, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-train-mem-") as tmp:
        extra = {"vocab_size": args.vocab} if args.vocab else {}
        path = build_random_checkpoint(RELEASE, Path(tmp) / "ckpt", args.layers, **extra)
        params = model_params(path)
        payload["params"] = params
        for variant in args.variants.split(","):
            out = C.run_child(Path(__file__), ["--child", "--variant", variant, "--checkpoint", path,
                                               "--threads", args.threads], timeout=1800)
            payload["runs"][variant] = out
            extra = out["peak_extra_mib"] * 2**20
            loaded = out["phases_mib"]["loaded"] * 2**20
            rows.append([variant, loaded / params, out["peak_extra_mib"], extra / params])
            print(f"{variant}: {extra / params:.2f} bytes/param", file=sys.stderr)
    goals = {"lora": 2.6, "full": 19, "full_fused": 19}
    rows = [r + [goals.get(r[0]) or "—"] for r in rows]
    tables = [(None, C.markdown_table(["variant", "after loading: bytes / param", "peak extra MiB", "peak bytes / param", "goal"], rows))]
    notes = [f"SDAR-4B-Chat shape, {args.layers} layers, vocabulary {args.vocab or 151936:,}, "
             f"{params / 1e9:.3f} B parameters, bf16 on disk; "
             "mixed_precision=bf16, LoRA r=16 on all seven linears with the self-play snapshot adapter",
             "peak RSS during setup and the first optimizer step minus RSS after the imports, fresh process each; "
             "'after loading': RSS once target and reference are loaded (before the optimizer and the step)"]
    C.report(args.name, "Host memory of setting up training (SDAR-4B shape)", info, tables, notes,
             payload=payload, out_dir=args.out, write=not args.quick)


if __name__ == "__main__":
    main()

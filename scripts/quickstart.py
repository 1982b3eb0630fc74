"""Quickstart: the whole T3D pipeline on the embedded default, on CPU, with the documented commands.

    make quickstart            # = python scripts/quickstart.py

1. rollout     sample/sdar_sample.py: the tiny SDAR decodes train questions at S=4 (one token per step),
               recording each token's decoding step (step_map)
2. preprocess  data/rename_key.py: rollouts -> T3D training records
3. T3D         train/self_ddo_sdar_full.py with configs/t3d_tiny.yaml (shortened)
4. evaluate    eval.py: base vs T3D on held-out test questions at S=4, 2 and 1 (S=1: all 4 tokens of a
               block in one forward), printing the before/after table

Everything goes to experiments/quickstart/ (logs of each command in logs/). Sizes are flags; the defaults
(one seed of the results/ experiment: 4,000 rollouts, 2 epochs, the 500 test questions) take about
2.5 minutes on 2 CPU cores (see results/README.md for the 3-seed experiment with its baseline).
"""
import argparse
import sys
import time
from pathlib import Path

import pipeline as pl

DEFAULT_MODEL = pl.ROOT / "models" / "sdar-tiny"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="base checkpoint (default: the embedded models/sdar-tiny)")
    p.add_argument("--out", default=str(pl.ROOT / "experiments" / "quickstart"), help="working directory")
    p.add_argument("--train-data", default=str(pl.ROOT / "data" / "synthetic_math_train.json"))
    p.add_argument("--test-data", default=str(pl.ROOT / "data" / "synthetic_math_test.json"))
    p.add_argument("--rollout-questions", type=int, default=4000, help="train questions to roll out")
    p.add_argument("--eval-questions", type=int, default=500, help="test questions to evaluate on")
    p.add_argument("--epochs", type=int, default=2, help="T3D epochs (one self-play round each)")
    p.add_argument("--steps", default="4,2,1", help="denoising steps per block to evaluate (block size 4)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true",
                   help="only a line per stage (each command's output still goes to its log)")
    return p.parse_args(argv)


def table(rows, steps):
    """Before/after table: one row per checkpoint, accuracy and tokens/forward per S."""
    by = {(r["checkpoint"], r["denoising_steps_per_block"]): r for r in rows}
    names = list(dict.fromkeys(r["checkpoint"] for r in rows))
    head = "| model | " + " | ".join(f"S={s} acc (tok/fwd)" for s in steps) + " |"
    lines = [head, "|---|" + "---:|" * len(steps)]
    for name in names:
        cells = [f"{by[name, s]['accuracy']:.3f} ({by[name, s]['tokens_per_forward']:.2f})" for s in steps]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out).resolve()
    steps = [int(s) for s in args.steps.split(",")]
    run = pl.Runner(out / "logs", verbose=not args.quiet)  # each stage's progress as it runs
    started = time.perf_counter()
    data = out / "data"
    questions = pl.subset(args.train_data, data / "quickstart_train.json", 0, args.rollout_questions)
    test = pl.subset(args.test_data, data / "quickstart_test.json", 0, args.eval_questions)

    # 1. rollout at S = B = 4: the trajectories T3D distils
    cmd, cwd = pl.rollout_command(args.model, questions, out, "sdar_sample", steps=4, temperature=0.1, seed=args.seed)
    run("rollout", cmd, cwd)
    rollout_file = pl.rollout_output(args.model, questions, out)
    # 2. rollout items -> one training record per replica
    records = data / "sdar-tiny-quickstart_train_renamed.json"
    run("rename_key", pl.rename_command(rollout_file, records))
    # 3. T3D (DDO + path loss), the tiny recipe shortened to --epochs
    run("t3d", pl.train_command("self_ddo_sdar_full.py", "configs/t3d_tiny.yaml", {
        "model.pretrained_model": Path(args.model).resolve(), "dataset.optimization_data": records,
        "experiment.output_dir": out, "experiment.project": "t3d", "training.num_train_epochs": args.epochs,
        "training.seed": args.seed, "training.num_threads": args.threads,
    }))
    t3d = out / "t3d" / "ckpt" / "optimized"
    # 4. few-step evaluation, base vs T3D
    run("eval", pl.eval_command({"base": args.model, "t3d": t3d}, test, out, "eval", steps=steps))
    rows, sweep = pl.sweep_rows(out, "eval", test)

    minutes = (time.perf_counter() - started) / 60
    print(f"\nTest accuracy on {args.eval_questions} held-out questions, block size 4, greedy decoding "
          f"(S = denoising steps per block; S=1 decodes a whole block per forward):\n")
    print(table(rows, steps))
    print(f"\nsweep table, JSON and plot: {sweep.parent}\ntotal {minutes:.1f} min")
    return rows


if __name__ == "__main__":
    try:
        main()
    except pl.StageError as err:
        sys.exit(f"quickstart: {err}")

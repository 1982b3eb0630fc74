"""Reproduce results/: T3D vs a naive self-distillation baseline on the embedded tiny SDAR, 3 training seeds.

    python scripts/run_experiment.py                   # data, rollout, train, eval, report on models/sdar-tiny
    python scripts/run_experiment.py --retrain-base    # first retrain the base with configs/sft_tiny.yaml
    python scripts/run_experiment.py --split val --stages eval,report --results experiments/t3d_tiny/val_report
                                                       # the validation numbers used for tuning

Stages (all through the documented CLIs, see scripts/pipeline.py; logs in <out>/logs/):
  base     train/sft_sdar.py config=configs/sft_tiny.yaml (only with --retrain-base; --install-base then copies
           the checkpoint into models/sdar-tiny)
  data     the rollout questions: the first --rollout-questions items of data/synthetic_math_train.json
  rollout  sample/sdar_sample.py at S = B = 4, then data/rename_key.py -> training records
  train    per seed: T3D (train/self_ddo_sdar_full.py config=configs/t3d_tiny.yaml) and the naive baseline
           (train/sft_sdar.py config=configs/experiments/naive_sd_tiny.yaml: plain masked CE on the same records,
           same epochs, batch and learning rate)
  eval     eval.py: every checkpoint at S = 4, 2, 1 on the test split (or --split val: data/synthetic_math_val.json), greedy
  report   <results>/results.json, README-ready table (table.md), accuracy_vs_tokens_per_forward.png, commands.sh
"""
import argparse
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

import pipeline as pl

ROOT = pl.ROOT
STAGES = ("base", "data", "rollout", "train", "eval", "report")
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "chat_template.jinja")
METHODS = {"t3d": "T3D", "naive": "naive self-distillation"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", default="data,rollout,train,eval,report", help=f"comma list of {','.join(STAGES)}")
    p.add_argument("--retrain-base", action="store_true", help="add the base stage and use its checkpoint")
    p.add_argument("--install-base", action="store_true", help="copy the retrained base into models/sdar-tiny")
    p.add_argument("--base", default=str(ROOT / "models" / "sdar-tiny"), help="base checkpoint (without --retrain-base)")
    p.add_argument("--out", default=str(ROOT / "experiments" / "t3d_tiny"), help="working directory")
    p.add_argument("--results", default=str(ROOT / "results"), help="where the report goes")
    p.add_argument("--data-dir", default=str(ROOT / "data"), help="folder with synthetic_math_{train,val,test}.json")
    p.add_argument("--seeds", default="0,1,2", help="training seeds")
    p.add_argument("--split", default="test", choices=("test", "val"), help="evaluation split (tune on val only)")
    p.add_argument("--rollout-questions", type=int, default=4000)
    p.add_argument("--rollout-temperature", type=float, default=0.1)
    p.add_argument("--eval-temperature", type=float, default=0.0)
    p.add_argument("--steps", default="4,2,1", help="denoising steps per block to evaluate")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--t3d-config", default="configs/t3d_tiny.yaml")
    p.add_argument("--naive-config", default="configs/experiments/naive_sd_tiny.yaml")
    p.add_argument("--train-override", action="append", default=[],
                   help="extra key=value for BOTH trainers (e.g. training.num_train_epochs=3); repeatable")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


class Experiment:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.seeds = [int(s) for s in args.seeds.split(",")]
        self.steps = [int(s) for s in args.steps.split(",")]
        self.run = pl.Runner(self.out / "logs", verbose=args.verbose)
        self.data = self.out / "data"
        self.base = (self.out / "sft_tiny" / "ckpt" / "sft") if args.retrain_base else Path(args.base).resolve()
        self.val_file = Path(args.data_dir).resolve() / "synthetic_math_val.json"
        self.questions = self.data / "synthetic_math_train_rollout.json"
        self.records = self.data / "sdar-tiny-synthetic_math_train_rollout_renamed.json"
        self.train_file = Path(args.data_dir).resolve() / "synthetic_math_train.json"
        self.test_file = Path(args.data_dir).resolve() / "synthetic_math_test.json"

    # ------------------------------------------------------------------------------------------- stages
    def stage_base(self):
        self.run("base_sft", pl.train_command("sft_sdar.py", "configs/sft_tiny.yaml", {
            "experiment.output_dir": self.out, "training.num_threads": self.args.threads,
            "dataset.optimization_data": self.train_file}))
        if self.args.install_base:
            dest = ROOT / "models" / "sdar-tiny"
            for name in MODEL_FILES:
                shutil.copy2(self.base / name, dest / name)
            print(f"installed {self.base} -> {dest}")

    def stage_data(self):
        pl.subset(self.train_file, self.questions, 0, self.args.rollout_questions)
        print(f"wrote {self.questions} ({self.args.rollout_questions} items)")

    def stage_rollout(self):
        cmd, cwd = pl.rollout_command(self.base, self.questions, self.out, "sdar_sample", steps=4,
                                      temperature=self.args.rollout_temperature, seed=0)
        self.run("rollout", cmd, cwd)
        self.run("rename_key", pl.rename_command(pl.rollout_output(self.base, self.questions, self.out), self.records))

    def _overrides(self):
        extra = dict(kv.split("=", 1) for kv in self.args.train_override)
        return {"model.pretrained_model": self.base, "dataset.optimization_data": self.records,
                "experiment.output_dir": self.out, "training.num_threads": self.args.threads, **extra}

    def checkpoint(self, method, seed):
        return self.out / f"{method}_seed{seed}" / "ckpt" / ("optimized" if method == "t3d" else "naive")

    def stage_train(self):
        for seed in self.seeds:
            self.run(f"t3d_seed{seed}", pl.train_command("self_ddo_sdar_full.py", self.args.t3d_config, {
                **self._overrides(), "experiment.project": f"t3d_seed{seed}", "training.seed": seed}))
            self.run(f"naive_seed{seed}", pl.train_command("sft_sdar.py", self.args.naive_config, {
                **self._overrides(), "experiment.project": f"naive_seed{seed}", "training.seed": seed}))

    def eval_dataset(self):
        return self.val_file if self.args.split == "val" else self.test_file

    def stage_eval(self):
        ckpts = {"base": self.base}
        for seed in self.seeds:
            for method in METHODS:
                ckpts[f"{method}_seed{seed}"] = self.checkpoint(method, seed)
        self.run(f"eval_{self.args.split}", pl.eval_command(ckpts, self.eval_dataset(), self.out, f"eval_{self.args.split}",
                                                            steps=self.steps, temperature=self.args.eval_temperature))

    # ------------------------------------------------------------------------------------------- report
    def stage_report(self):
        from t3d.common.io import atomic_write_json, atomic_write_text, read_records
        from t3d.eval.evaluate import aup_rows, plot_sweep

        dataset = self.eval_dataset()
        rows, sweep = pl.sweep_rows(self.out, f"eval_{self.args.split}", dataset)
        items = read_records(dataset)
        for row in rows:
            row["valid"] = valid_share(row, items)
        summary = summarize(rows, self.steps)
        goal = goal_check(summary, max(self.steps), min(self.steps))
        results = Path(self.args.results)
        history = self.history()
        setup = {
            "base_checkpoint": str(self.base.relative_to(ROOT) if self.base.is_relative_to(ROOT) else self.base),
            "eval_dataset": dataset.name, "eval_items": len(items), "block_size": 4, "max_token": 64,
            "eval_temperature": self.args.eval_temperature, "rollout_questions": self.args.rollout_questions,
            "rollout_temperature": self.args.rollout_temperature, "rollout_steps_per_block": 4,
            "seeds": self.seeds, "t3d_config": self.args.t3d_config, "naive_config": self.args.naive_config,
            "train_overrides": self.args.train_override,
        }
        keep = ("checkpoint", "setting", "denoising_steps_per_block", "accuracy", "valid", "answer_rate",
                "mean_response_length", "mean_nfe", "tokens_per_forward", "decode_seconds")
        atomic_write_json(results / "results.json", {
            "setup": setup, "summary": summary, "goal": goal,
            "runs": [{k: r.get(k) for k in keep} for r in rows],
            "timings": {h["stage"]: h["seconds"] for h in history},
        })
        atomic_write_text(results / "table.md", markdown(summary, self.steps, goal))
        mean_rows = [{"checkpoint": s["label"], "sweep_kind": "steps", "setting": f"S={S}",
                      "tokens_per_forward": s["by_steps"][str(S)]["tokens_per_forward"],
                      "accuracy": s["by_steps"][str(S)]["accuracy_mean"]}
                     for s in summary.values() for S in self.steps]
        plot_sweep(mean_rows, results / "accuracy_vs_tokens_per_forward.png",
                   f"{dataset.stem} (B=4, greedy; trained models: mean of {len(self.seeds)} seeds)", aup_rows(mean_rows))
        atomic_write_text(results / "commands.sh", commands_script(history))
        print((results / "table.md").read_text())

    def history(self):
        """The latest successful run of each stage's command (from every invocation on this --out), minus
        evaluations of the other split."""
        path = self.run.log_dir / "history.jsonl"
        entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
        latest = {}
        for h in entries:
            if h.get("exit", 0) == 0 and (not h["stage"].startswith("eval_") or h["stage"] == f"eval_{self.args.split}"):
                latest[h["stage"]] = h
        return list(latest.values())


valid_share = pl.valid_share


def summarize(rows, steps):
    """{method: {label, seeds, by_steps: {S: accuracy mean/std over seeds, valid, tokens/forward}}}."""
    groups = {}
    for row in rows:
        method = re.sub(r"_seed\d+$", "", row["checkpoint"])
        groups.setdefault(method, []).append(row)
    out = {}
    for method, members in groups.items():
        by = {}
        for S in steps:
            at = [r for r in members if r["denoising_steps_per_block"] == S]
            acc_mean, acc_std = pl.mean_std([r["accuracy"] for r in at])
            valid_mean, valid_std = pl.mean_std([r.get("valid") for r in at])
            by[str(S)] = {"accuracy_mean": acc_mean, "accuracy_std": acc_std, "accuracy": [r["accuracy"] for r in at],
                          "valid_mean": valid_mean, "valid_std": valid_std,
                          "tokens_per_forward": statistics.fmean(r["tokens_per_forward"] for r in at), "n": len(at)}
        out[method] = {"label": METHODS.get(method, method), "seeds": len({r["checkpoint"] for r in members}),
                       "by_steps": by}
    return out


def goal_check(summary, full, few):
    """Issue goal: T3D recovers >= half of the base's (S=B - S=1) gap at S=1; its S=B accuracy drops <= 2 points."""
    if "base" not in summary or "t3d" not in summary:
        return None
    base, t3d = summary["base"]["by_steps"], summary["t3d"]["by_steps"]
    gap = base[str(full)]["accuracy_mean"] - base[str(few)]["accuracy_mean"]
    recovered = (t3d[str(few)]["accuracy_mean"] - base[str(few)]["accuracy_mean"]) / gap if gap > 0 else None
    drop = base[str(full)]["accuracy_mean"] - t3d[str(full)]["accuracy_mean"]
    out = {"base_gap": gap, "t3d_gap_recovered": recovered, "t3d_full_step_drop": drop}
    out["met"] = bool(recovered is not None and recovered >= 0.5 and drop <= 0.02)
    if "naive" in summary:
        naive = summary["naive"]["by_steps"]
        out["naive_gap_recovered"] = (naive[str(few)]["accuracy_mean"] - base[str(few)]["accuracy_mean"]) / gap if gap > 0 else None
        out["naive_full_step_drop"] = base[str(full)]["accuracy_mean"] - naive[str(full)]["accuracy_mean"]
    return out


def _cell(entry, key="accuracy"):
    mean, std = entry[f"{key}_mean"], entry[f"{key}_std"]
    if mean is None:
        return "–"
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if entry["n"] > 1 else f"{100 * mean:.1f}"


def markdown(summary, steps, goal):
    head = ("| model | " + " | ".join(f"S={S} acc % " for S in steps) + " | "
            + " | ".join(f"S={S} valid % " for S in steps) + " | tokens/forward |")
    lines = [head, "|---|" + "---:|" * (2 * len(steps) + 1)]
    for method, s in summary.items():
        by = s["by_steps"]
        tpf = " / ".join(f"{by[str(S)]['tokens_per_forward']:.2f}" for S in steps)
        name = s["label"] + (f" ({s['seeds']} seeds)" if s["seeds"] > 1 else "")
        lines.append(f"| {name} | " + " | ".join(_cell(by[str(S)]) for S in steps) + " | "
                     + " | ".join(_cell(by[str(S)], "valid") for S in steps) + f" | {tpf} |")
    if goal and goal["t3d_gap_recovered"] is None:
        lines += ["", f"Base gap S={max(steps)} − S={min(steps)}: {100 * goal['base_gap']:.1f} points: nothing to "
                  "recover, so the goal cannot be met."]
    elif goal:
        lines += ["", f"Base gap S={max(steps)} − S={min(steps)}: {100 * goal['base_gap']:.1f} points. "
                  f"T3D recovers {100 * goal['t3d_gap_recovered']:.0f}% of it at S={min(steps)}; its S={max(steps)} accuracy "
                  f"changes by {-100 * goal['t3d_full_step_drop']:+.1f} points. Goal (≥ 50% recovered, ≤ 2 points lost): "
                  f"{'met' if goal['met'] else 'NOT met'}."]
        if goal.get("naive_gap_recovered") is not None:
            lines.append(f"Naive self-distillation recovers {100 * goal['naive_gap_recovered']:.0f}% and changes S={max(steps)} "
                         f"by {-100 * goal['naive_full_step_drop']:+.1f} points.")
    return "\n".join(lines) + "\n"


commands_script = pl.commands_script


def main(argv=None):
    args = parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if args.retrain_base and "base" not in stages:
        stages.insert(0, "base")
    pl.run_stages(Experiment(args), stages, STAGES, "run_experiment")


if __name__ == "__main__":
    try:
        main()
    except pl.StageError as err:
        sys.exit(f"run_experiment: {err}")

"""Reproduce results/v2/: T3D, its ablations and the baselines on the chain task (block size 8), one command.

    python scripts/run_experiment_v2.py                      # data, rollout, train, tune, eval, report
    python scripts/run_experiment_v2.py --split val --stages tune,eval,report --results experiments/t3d_chain_v2/val_report
                                                             # the validation numbers (tune on val only)

Methods (every trained one starts from --base, reads the SAME rollout records and has the same budget:
epochs, batch, learning-rate schedule of configs/t3d_chain.yaml = configs/experiments/naive_sd_chain.yaml):
  base          the base at static S = B ... 1, and its dynamic-threshold sweep (the training-free baseline;
                thresholds picked on val by the tune stage); every trained checkpoint is swept at the same
                static S and the same thresholds, and each method is scored per decoder (static, dynamic τ)
  naive         masked CE on the rollout records (train/sft_sdar.py, configs/experiments/naive_sd_chain.yaml)
  t3d           T3D as shipped (train/self_ddo_sdar_full.py, configs/t3d_chain.yaml)
  ddo_only      T3D with training.lambda_path=0          path_only     T3D with training.lambda_ddo=0
  random_masks  T3D with training.mask_strategy=random   one_round     T3D with training.multi_round=false
  t3d_beta1     T3D with training.beta=1.0 (the DDO scale chosen on val), as many seeds as t3d
Stages (all through the documented CLIs, see scripts/pipeline.py; logs in <out>/logs/; --jobs commands at once):
  data     the rollout questions: the first --rollout-questions items of <data-dir>/<task>_train.json
  rollout  sample/sdar_sample.py at S = B, then data/rename_key.py -> training records
  train    every (method, seed)
  tune     eval.py: the base's dynamic-threshold sweep over --thresholds on val; keeps the thresholds whose
           points AUP keeps (within 5 points of the slowest one), at most 4 -> <out>/thresholds.json
  eval     eval.py, greedy: every checkpoint at every S on --split and at the chosen thresholds there; every
           checkpoint at S = B on the shifted split (<task>_ood.json, if the task has one) when --split is test
  report   <results>/results.json, table.md, accuracy_vs_tokens_per_forward.png, commands.sh
"""
import argparse
import json
import re
import sys
from pathlib import Path

import pipeline as pl

ROOT = pl.ROOT
STAGES = ("data", "rollout", "train", "tune", "eval", "report")
T3D_SCRIPT, NAIVE_SCRIPT = "self_ddo_sdar_full.py", "sft_sdar.py"
# name: (label, trainer, overrides of the T3D config (None = the naive trainer), seeds flag)
METHODS = {
    "naive": ("naive self-distillation", NAIVE_SCRIPT, None, "seeds"),
    "t3d": ("T3D", T3D_SCRIPT, {}, "seeds"),
    "ddo_only": ("T3D, DDO only (λ_path = 0)", T3D_SCRIPT, {"training.lambda_path": 0.0}, "ablation_seeds"),
    "path_only": ("T3D, path loss only (λ_ddo = 0)", T3D_SCRIPT, {"training.lambda_ddo": 0.0}, "ablation_seeds"),
    "random_masks": ("T3D, random masks", T3D_SCRIPT, {"training.mask_strategy": "random"}, "ablation_seeds"),
    "one_round": ("T3D, one round", T3D_SCRIPT, {"training.multi_round": False}, "ablation_seeds"),
    # beta chosen on val (one seed: the DDO terms move at 1.0 and stay at log 2 at the shipped 0.1), three seeds
    "t3d_beta1": ("T3D, β = 1 (chosen on val)", T3D_SCRIPT, {"training.beta": 1.0}, "seeds"),
}
BASELINES = ("base", "base_dynamic", "naive", "naive_dynamic")  # what the goal's T3D must beat, in either decoder
DYNAMIC = "_dynamic"  # group suffix: a checkpoint's dynamic-threshold points, scored apart from its static ones
MAX_THRESHOLDS = 4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", default="data,rollout,train,tune,eval,report", help=f"comma list of {','.join(STAGES)}")
    p.add_argument("--base", default=str(ROOT / "models" / "sdar-chain"), help="base checkpoint")
    p.add_argument("--out", default=str(ROOT / "experiments" / "t3d_chain_v2"), help="working directory")
    p.add_argument("--results", default=str(ROOT / "results" / "v2"), help="where the report goes")
    p.add_argument("--data-dir", default=str(ROOT / "data"), help="folder with <task>_{train,val,test,ood}.json")
    p.add_argument("--task", default="synthetic_chain", help="dataset file prefix")
    p.add_argument("--block-size", type=int, default=8)
    p.add_argument("--max-token", type=int, default=80)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {','.join(METHODS)}")
    p.add_argument("--seeds", default="0,1,2", help="training seeds of naive and t3d")
    p.add_argument("--ablation-seeds", default="0", help="training seeds of each ablation")
    p.add_argument("--split", default="test", choices=("test", "val"), help="evaluation split (tune on val only)")
    p.add_argument("--eval-items", type=int, default=None, help="first N items of each evaluation split (default all)")
    p.add_argument("--rollout-questions", type=int, default=1000)
    p.add_argument("--rollout-temperature", type=float, default=0.1)
    p.add_argument("--steps", default=None, help="denoising steps per block to evaluate (default B, B/2, ..., 1)")
    p.add_argument("--thresholds", default="0.99,0.95,0.9,0.8,0.7,0.5", help="dynamic thresholds tried on val")
    p.add_argument("--jobs", type=int, default=2, help="commands run side by side (one thread each)")
    p.add_argument("--t3d-config", default="configs/t3d_chain.yaml")
    p.add_argument("--naive-config", default="configs/experiments/naive_sd_chain.yaml")
    p.add_argument("--train-override", action="append", default=[],
                   help="extra key=value for EVERY trainer (e.g. training.num_train_epochs=3); repeatable")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.argv = argv  # None: from the command line (commands.sh repeats sys.argv)
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    return args


def default_steps(block_size):
    """B, B/2, ..., 1."""
    out = [block_size]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


class Experiment:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.B = args.block_size
        self.steps = [int(s) for s in args.steps.split(",")] if args.steps else default_steps(self.B)
        self.run = pl.Runner(self.out / "logs", verbose=args.verbose)
        self.base = Path(args.base).resolve()
        data_dir = Path(args.data_dir).resolve()
        self.split_file = {s: data_dir / f"{args.task}_{s}.json" for s in ("train", "val", "test", "ood")}
        self.questions = self.out / "data" / f"{args.task}_train_rollout.json"
        self.records = self.out / "data" / f"{args.task}_train_rollout_renamed.json"
        self.runs = [(m, seed) for m in args.methods.split(",")
                     for seed in (int(s) for s in getattr(args, METHODS[m][3]).split(","))]

    # ------------------------------------------------------------------------------------------- stages
    def stage_data(self):
        pl.subset(self.split_file["train"], self.questions, 0, self.args.rollout_questions)
        print(f"wrote {self.questions} ({self.args.rollout_questions} items)")

    def stage_rollout(self):
        cmd, cwd = pl.rollout_command(self.base, self.questions, self.out, "sdar_sample", block_size=self.B, steps=self.B,
                                      max_token=self.args.max_token, temperature=self.args.rollout_temperature, seed=0)
        self.run("rollout", cmd, cwd)
        self.run("rename_key", pl.rename_command(pl.rollout_output(self.base, self.questions, self.out), self.records))

    def checkpoint(self, method, seed):
        return self.out / f"{method}_seed{seed}" / "ckpt" / ("naive" if METHODS[method][1] == NAIVE_SCRIPT else "optimized")

    def train_job(self, method, seed):
        _, script, overrides, _ = METHODS[method]
        config = self.args.naive_config if script == NAIVE_SCRIPT else self.args.t3d_config
        values = {"model.pretrained_model": self.base, "dataset.optimization_data": self.records,
                  "experiment.output_dir": self.out, "experiment.project": f"{method}_seed{seed}",
                  "training.seed": seed, "training.num_threads": 1, **(overrides or {}),
                  **dict(kv.split("=", 1) for kv in self.args.train_override)}
        return f"train_{method}_seed{seed}", pl.train_command(script, config, values)

    def stage_train(self):
        self.run.parallel([self.train_job(m, s) for m, s in self.runs], self.args.jobs)

    def eval_job(self, name, checkpoints, split, steps=None, thresholds=None):
        extra = {"evaluation.num_threads": 1}
        if self.args.eval_items:
            extra["evaluation.max_items"] = self.args.eval_items
        if thresholds:
            extra["sweep.dynamic_thresholds"] = list(thresholds)
        cmd = pl.eval_command(checkpoints, self.split_file[split], self.out, name, steps=steps or [], block_size=self.B,
                              max_token=self.args.max_token, extra=extra)
        if not steps:  # a threshold sweep; eval.py adds its default S=1 static point (cheap; dropped by sweep_rows)
            cmd = [c for c in cmd if not c.startswith("sweep.denoising_steps=")] + ["sweep.denoising_steps=null"]
        return name, cmd

    def sweep_rows(self, name, split):
        """eval.py's rows of one of this run's eval commands (a threshold sweep: its threshold rows only)."""
        rows, _ = pl.sweep_rows(self.out, name, self.split_file[split])
        return [r for r in rows if r["sweep_kind"] == "threshold"] if "dynamic" in name else rows

    def stage_tune(self):
        """Pick the dynamic thresholds on val: those whose points AUP keeps, the most parallel first."""
        from t3d.eval.aup import aup

        name, cmd = self.eval_job("tune_val_dynamic", {"base": self.base}, "val", thresholds=self.candidates())
        self.run(name, cmd)
        rows = self.sweep_rows(name, "val")
        pts = sorted(((r["tokens_per_forward"], 100 * r["accuracy"], r["dynamic_threshold"]) for r in rows))
        floor = pts[0][1] - 5.0  # utils/aup.py's filter: within 5 points of the slowest point
        kept = [tau for _, y, tau in pts if y >= floor]
        chosen = sorted(kept[-MAX_THRESHOLDS:], reverse=True)
        y_max = max(y for _, y, _ in pts)
        score = aup([(x, y) for x, y, tau in pts if tau in chosen], y_max)[0] if y_max > 0 else None
        from t3d.common.io import atomic_write_json

        atomic_write_json(self.out / "thresholds.json", {"candidates": self.candidates(), "chosen": chosen,
                                                         "val_points": pts, "val_aup": score})
        print(f"dynamic thresholds chosen on val: {chosen}")

    def candidates(self):
        return [float(t) for t in self.args.thresholds.split(",")]

    def chosen_thresholds(self):
        path = self.out / "thresholds.json"
        if not path.exists():
            sys.exit(f"run_experiment_v2: {path} is missing: run the tune stage first")
        return json.loads(path.read_text(encoding="utf-8"))["chosen"]

    def trained(self):
        return {f"{m}_seed{s}": self.checkpoint(m, s) for m, s in self.runs}

    def eval_jobs(self):
        """Static and threshold sweeps of every checkpoint (dealt over --jobs commands), S = B on ood."""
        split, ckpts = self.args.split, {"base": self.base, **self.trained()}
        labels, n = list(ckpts), max(1, self.args.jobs)
        jobs = [self.eval_job(f"eval_{split}_static{i}", {k: ckpts[k] for k in labels[i::n]}, split, self.steps)
                for i in range(min(n, len(labels)))]
        jobs += [self.eval_job(f"eval_{split}_dynamic{i}", {k: ckpts[k] for k in labels[i::n]}, split,
                               thresholds=self.chosen_thresholds()) for i in range(min(n, len(labels)))]
        if split == "test" and self.split_file["ood"].exists():  # a task without a shifted split skips it
            jobs += [self.eval_job(f"eval_ood_full{i}", {k: ckpts[k] for k in labels[i::n]}, "ood", [self.B])
                     for i in range(min(n, len(labels)))]
        return jobs

    def stage_eval(self):
        self.run.parallel(self.eval_jobs(), self.args.jobs)

    # ------------------------------------------------------------------------------------------- report
    def rows(self, split):
        """Every eval row of a split from this run's eval commands, with the valid-phrasing share."""
        from t3d.common.io import read_records

        items = read_records(self.split_file[split])
        rows = []
        for name, _ in self.eval_jobs():
            if name.startswith(f"eval_{split}_"):
                got = self.sweep_rows(name, split)
                for r in got:
                    r["valid"] = pl.valid_share(r, items)
                rows += got
        return rows, len(items) if not self.args.eval_items else min(self.args.eval_items, len(items))

    def stage_report(self):
        from t3d.common.io import atomic_write_json, atomic_write_text
        from t3d.eval.evaluate import plot_sweep

        split = self.args.split
        rows, n_items = self.rows(split)
        ood_rows, n_ood = self.rows("ood") if split == "test" and self.split_file["ood"].exists() else ([], 0)
        summary = summarize(rows, ood_rows, self.steps, self.B)
        goal = goal_check(summary)  # T3D as shipped; a seeded T3D variant (e.g. t3d_beta1) is checked the same way
        variants = {m: goal_check(summary, m) for m in summary if m.startswith("t3d_") and not m.endswith(DYNAMIC)
                    and summary[m]["seeds"] > 1}
        history = self.history()
        thresholds = json.loads((self.out / "thresholds.json").read_text(encoding="utf-8"))
        setup = {
            "base_checkpoint": str(self.base.relative_to(ROOT) if self.base.is_relative_to(ROOT) else self.base),
            "task": self.args.task, "eval_split": split, "eval_items": n_items, "ood_items": n_ood,
            "block_size": self.B, "steps": self.steps, "max_token": self.args.max_token, "eval_temperature": 0.0,
            "rollout_questions": self.args.rollout_questions, "rollout_temperature": self.args.rollout_temperature,
            "rollout_steps_per_block": self.B, "seeds": self.args.seeds, "ablation_seeds": self.args.ablation_seeds,
            "t3d_config": self.args.t3d_config, "naive_config": self.args.naive_config,
            "train_overrides": self.args.train_override, "methods": {m: METHODS[m][2] for m in self.args.methods.split(",")},
            "dynamic_thresholds": thresholds,
        }
        keep = ("checkpoint", "sweep_kind", "setting", "denoising_steps_per_block", "dynamic_threshold", "accuracy",
                "valid", "answer_rate", "mean_response_length", "mean_nfe", "tokens_per_forward",
                "tokens_per_forward_no_prefill", "decode_seconds")
        results = Path(self.args.results)
        atomic_write_json(results / "results.json", {
            "setup": setup, "summary": summary, "goal": goal, "variant_goals": variants,
            "runs": [{k: r.get(k) for k in keep} for r in rows],
            "ood_runs": [{k: r.get(k) for k in keep} for r in ood_rows],
            "timings": {h["stage"]: h["seconds"] for h in history},
            "stage_wall_seconds": self.stage_seconds(),
        })
        atomic_write_text(results / "table.md", markdown(summary, self.steps, [goal, *variants.values()], self.B))
        plot_sweep(frontier_rows(summary), results / "accuracy_vs_tokens_per_forward.png",
                   f"{self.args.task} {split} (B={self.B}, greedy; trained: mean over seeds)",
                   [{"method": s["label"], "aup": s["aup_mean"]} for s in summary.values() if s["aup_mean"] is not None])
        atomic_write_text(results / "commands.sh", self.commands(history))
        print((results / "table.md").read_text())

    def commands(self, history):
        """commands.sh: the one-command rerun, then every command with its wall time (the data stage as a
        one-liner: the first N training items)."""
        script = pl.commands_script(history, "scripts/run_experiment_v2.py")
        argv = sys.argv[1:] if self.args.argv is None else self.args.argv
        drop = {i for i, a in enumerate(argv) if a == "--stages"}  # every stage, whichever ran last
        rerun = " ".join(pl._portable_arg(a) for i, a in enumerate(argv)
                         if i not in drop and i - 1 not in drop and not a.startswith("--stages="))
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in self.stage_seconds().items())
        data = pl.shell_line([pl.PY, "-c", "import sys, json; json.dump(json.load(open(sys.argv[1]))[:int(sys.argv[3])], "
                              "open(sys.argv[2], \"w\"))", self.split_file["train"], self.questions,
                              str(self.args.rollout_questions)], portable=True)
        head, body = script.split('ROOT="${ROOT:-$PWD}"\n', 1)
        return (head + 'ROOT="${ROOT:-$PWD}"\n' + f"# All of it in one command (stage wall times: {stages}):\n"
                f"#   python scripts/run_experiment_v2.py {rerun}\n\n# data\nmkdir -p {pl._portable_arg(self.questions.parent)}\n"
                f"{data}\n" + body)

    def stage_seconds(self, record=None):
        """{stage: wall seconds} of the latest run of each stage on --out (record: add {stage: seconds})."""
        path = self.out / "stage_seconds.json"
        seconds = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if record:
            from t3d.common.io import atomic_write_json

            seconds.update(record)
            atomic_write_json(path, seconds)
        return seconds

    def expected_stages(self):
        names = ["rollout", "rename_key", "tune_val_dynamic", *(self.train_job(m, s)[0] for m, s in self.runs)]
        return names + [name for name, _ in self.eval_jobs()]

    def history(self):
        """The latest successful run of each of this configuration's commands (across invocations on --out)."""
        path = self.run.log_dir / "history.jsonl"
        entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
        latest = {h["stage"]: h for h in entries if h.get("exit", 0) == 0}
        return [latest[name] for name in self.expected_stages() if name in latest]


# ----------------------------------------------------------------------------------------------- summaries
def method_of(checkpoint):
    return re.sub(r"_seed\d+$", "", checkpoint)


def method_label(group):
    """A summary group's method label, without the decoder ('t3d_dynamic' -> 'T3D')."""
    method = group.removesuffix(DYNAMIC)
    return "base" if method == "base" else METHODS[method][0]


def summarize(rows, ood_rows, steps, block_size):
    """{method (static points) / method_dynamic (threshold points): label, seeds, by_setting {setting:
    accuracy/valid mean+std over seeds, tokens per forward}, aup per seed (y_max = the best accuracy of every row of the comparison) and its mean/std/min/max,
    full-step (S = B) accuracy change vs the base on the split and on ood}."""
    from t3d.eval.aup import aup
    from t3d.eval.evaluate import method_name

    y_max = 100 * max(r["accuracy"] for r in rows)
    groups = {}
    for r in rows:
        name = method_of(r["checkpoint"]) + (DYNAMIC if r["sweep_kind"] == "threshold" else "")
        groups.setdefault(name, []).append(r)
    full = f"S={block_size}"
    order = [n + suffix for n in ("base", *METHODS) for suffix in ("", DYNAMIC)]
    out = {}
    for name, members in sorted(groups.items(), key=lambda kv: order.index(kv[0])):
        settings = list(dict.fromkeys(r["setting"] for r in members))
        by = {}
        for setting in settings:
            at = [r for r in members if r["setting"] == setting]
            acc, acc_std = pl.mean_std([r["accuracy"] for r in at])
            valid, valid_std = pl.mean_std([r.get("valid") for r in at])
            by[setting] = {"accuracy_mean": acc, "accuracy_std": acc_std, "accuracy": [r["accuracy"] for r in at],
                           "valid_mean": valid, "valid_std": valid_std, "n": len(at),
                           "tokens_per_forward": pl.mean_std([r["tokens_per_forward"] for r in at])[0],
                           "tokens_per_forward_no_prefill": pl.mean_std(
                               [r.get("tokens_per_forward_no_prefill") for r in at])[0]}
        per_seed = {}
        for ckpt in sorted(dict.fromkeys(r["checkpoint"] for r in members)):
            pts = [(r["tokens_per_forward"], 100 * r["accuracy"]) for r in members if r["checkpoint"] == ckpt]
            per_seed[ckpt] = aup(pts, y_max)[0] if len(pts) > 1 and y_max > 0 else None
        a_mean, a_std = pl.mean_std(list(per_seed.values()))
        scores = [v for v in per_seed.values() if v is not None]
        label = method_name(method_label(name), "threshold" if name.endswith(DYNAMIC) else "steps")
        out[name] = {"label": label, "seeds": len(per_seed), "by_setting": by, "y_max": y_max, "aup": per_seed,
                     "aup_mean": a_mean, "aup_std": a_std, "aup_min": min(scores, default=None),
                     "aup_max": max(scores, default=None)}
    for name, s in out.items():
        ref_split = out["base"]["by_setting"].get(full, {}).get("accuracy_mean") if "base" in out else None
        mine = s["by_setting"].get(full, {}).get("accuracy_mean")
        s["full_step_change"] = None if name == "base" or None in (mine, ref_split) else mine - ref_split
        ood = {}
        for r in ood_rows:
            if r["setting"] == full:
                ood.setdefault(method_of(r["checkpoint"]), []).append(r["accuracy"])
        s["ood_full_step"] = pl.mean_std(ood.get(name, []))[0] if not name.endswith(DYNAMIC) else None
        s["ood_full_step_change"] = (None if name == "base" or s["ood_full_step"] is None
                                     or "base" not in ood else s["ood_full_step"] - pl.mean_std(ood["base"])[0])
    return out


def goal_check(summary, method="t3d", tolerance=0.01):
    """The study's goal for `method` (T3D as shipped, or a T3D variant): its AUP above every baseline's (base and naive, each with the static and the dynamic
    decoder) with non-overlapping seed ranges (T3D's lowest seed above the baseline's highest), T3D taken with
    its better decoder (by lowest seed), and its S = B accuracy at most 1 point below the base's on the split."""
    modes = [n for n in (method, method + DYNAMIC) if n in summary and summary[n]["aup_min"] is not None]
    if not modes:
        return None
    decoder = max(modes, key=lambda n: summary[n]["aup_min"])
    best = summary[decoder]["aup_min"]
    beats = {b: best > summary[b]["aup_max"] for b in BASELINES if b in summary and summary[b]["aup_max"] is not None}
    change = summary[method]["full_step_change"] if method in summary else None
    kept = change is not None and change >= -tolerance - 1e-9  # accuracies are k/n: exactly 1 point is within
    return {"method": method, "t3d_decoder": decoder, "aup_beats": beats, "full_step_change": change, "full_step_kept": kept,
            "met": bool(beats) and all(beats.values()) and kept}


def frontier_rows(summary):
    """Seed-mean points of every method, in plot_sweep's row shape (a method's two decoders share its name)."""
    return [{"checkpoint": method_label(name), "sweep_kind": "threshold" if name.endswith(DYNAMIC) else "steps",
             "setting": setting, "tokens_per_forward": e["tokens_per_forward"], "accuracy": e["accuracy_mean"]}
            for name, s in summary.items() for setting, e in s["by_setting"].items()]


def _pct(mean, std=None, n=1, signed=False):
    if mean is None:
        return "–"
    text = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return text + (f" ± {100 * std:.1f}" if n > 1 and std is not None else "")


def markdown(summary, steps, goals, block_size):
    settings = [f"S={S}" for S in steps]
    lines = ["| method | seeds | " + " | ".join(f"{s} acc %" for s in settings) + " | tok/fwd | tok/fwd w/o prefill | AUP | "
             f"Δ S={block_size} (split) | Δ S={block_size} (ood) |",
             "|---|---:|" + "---:|" * (len(settings) + 5)]
    for name, s in summary.items():
        by = s["by_setting"]
        dynamic = name.endswith(DYNAMIC)
        cols = settings if not dynamic else list(by)
        accs = [_pct(by[c]["accuracy_mean"], by[c]["accuracy_std"], by[c]["n"]) if c in by else "–" for c in cols]
        if dynamic:  # its settings are thresholds: one cell listing them
            accs = ["; ".join(f"{c}: {a}" for c, a in zip(cols, accs))] + [""] * (len(settings) - 1)
        tpf = " / ".join(f"{by[c]['tokens_per_forward']:.2f}" for c in cols if c in by)
        tpf_np = " / ".join(f"{by[c]['tokens_per_forward_no_prefill']:.2f}" for c in cols
                            if c in by and by[c]["tokens_per_forward_no_prefill"] is not None)
        aup_cell = "–" if s["aup_mean"] is None else (f"{s['aup_mean']:.1f}" + (
            f" ± {s['aup_std']:.1f} [{s['aup_min']:.1f}, {s['aup_max']:.1f}]" if s["seeds"] > 1 else ""))
        lines.append(f"| {s['label']} | {s['seeds']} | " + " | ".join(accs) + f" | {tpf} | {tpf_np} | {aup_cell} | "
                     f"{_pct(s['full_step_change'], signed=True)} | {_pct(s['ood_full_step_change'], signed=True)} |")
    y_max = next(iter(summary.values()))["y_max"]
    lines += ["", f"AUP: d3LLM's accuracy under parallelism over each checkpoint's points (y_max = {y_max:.1f}%, the best "
              "accuracy in the table); mean ± std over seeds [min, max]. Δ: S=B accuracy minus the base's, in points."]
    for goal in filter(None, goals):
        beats = ", ".join(f"{b}: {'yes' if v else 'no'}" for b, v in goal["aup_beats"].items())
        lines.append(f"Goal for {summary[goal['method']]['label']} (lowest-seed AUP, with its better decoder "
                     f"({goal['t3d_decoder']}), above every "
                     f"baseline's highest; S={block_size} accuracy at most 1 point below the base): AUP above [{beats}]; "
                     f"S={block_size} change "
                     f"{_pct(goal['full_step_change'], signed=True)} points -> {'MET' if goal['met'] else 'NOT met'}.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    exp = Experiment(args)
    pl.run_stages(exp, stages, STAGES, "run_experiment_v2",
                  on_stage_done=lambda stage, seconds: exp.stage_seconds({stage: round(seconds, 1)}))


if __name__ == "__main__":
    try:
        main()
    except pl.StageError as err:
        sys.exit(f"run_experiment_v2: {err}")

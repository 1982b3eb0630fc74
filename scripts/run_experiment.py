"""Run one experiment described by a YAML file: rollout, training of every (method, seed), evaluation, report.

    python scripts/run_experiment.py                                                  # results/ (study_tiny.yaml)
    python scripts/run_experiment.py --experiment configs/experiments/study_chain.yaml   # results/v2/
    python scripts/run_experiment.py --experiment configs/experiments/study_chain.yaml --split val \\
        --stages tune,eval,report --results experiments/t3d_chain_v2/val_report      # the val numbers (tune on val only)
    python scripts/run_experiment.py --retrain-base --install-base --stages base     # retrain models/sdar-tiny

The experiment file (configs/experiments/study_*.yaml) names the task, base checkpoint, block size, max tokens,
rollout size, splits, seeds, dynamic thresholds, the goal, and the methods: each a trainer (its config) plus
overrides of that config. Every trained method starts from the base, reads the SAME rollout records and has the
same budget. Command-line flags override the file's values.

Stages (all through the documented CLIs, see scripts/pipeline.py; logs in <out>/logs/; `jobs` commands at once):
  base     train/sft_sdar.py with the experiment's base_sft config (only with --retrain-base; --install-base
           then copies the checkpoint to base_sft.install_to)
  data     the rollout questions: the first rollout_questions items of <data_dir>/<task>_train.json
  rollout  sample/sdar_sample.py at S = B, then data/rename_key.py -> training records
  train    every (method, seed)
  tune     eval.py: the base's dynamic-threshold sweep on val; keeps the thresholds whose points AUP keeps
           (within 5 points of the slowest one), at most max_thresholds -> <out>/thresholds.json (no thresholds:
           static decoding only, nothing to tune)
  eval     eval.py, greedy: every checkpoint at every S on the split and at the chosen thresholds there; every
           checkpoint at S = B on the shifted split (<task>_ood.json, if the task has one) when the split is test
  report   <results>/results.json, table.md, accuracy_vs_tokens_per_forward.png, commands.sh: seed means and
           spreads, AUP beside full-step accuracy, checkpoints that lose full-step accuracy, and paired bootstrap
           intervals over the items for method-vs-method differences

Reruns resume: a finished job (rollout, a (method, seed) training, a checkpoint's evaluation) is never redone or
overwritten, and a finished job whose command has changed since is an error (choose another --out). Stage wall
times (<out>/stage_seconds.json) add up over the invocations.
"""
import argparse
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

import yaml

import pipeline as pl
import uncertainty as unc

ROOT = pl.ROOT
STAGES = ("base", "data", "rollout", "train", "tune", "eval", "report")
DEFAULT_EXPERIMENT = ROOT / "configs" / "experiments" / "study_tiny.yaml"
EXPERIMENT_KEYS = ("description", "task", "data_dir", "base", "base_sft", "block_size", "max_token", "steps",
                   "rollout_questions", "rollout_temperature", "split", "eval_items", "eval_temperature", "thresholds",
                   "max_thresholds", "jobs", "threads", "seeds", "trainers", "methods", "train_overrides", "goal",
                   "baselines", "reference_method", "out", "results", "curve_steps",
                   "extra_splits")
OPTIONAL_KEYS = ("description", "base_sft", "curve_steps", "extra_splits")
GOALS = ("aup", "recovery")
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "chat_template.jinja")
DYNAMIC = "_dynamic"  # group suffix: a checkpoint's dynamic-threshold points, scored apart from its static ones
FULL_STEP_TOLERANCE = 0.01  # a checkpoint more than 1 point below the base at S = B is flagged


class ExperimentError(ValueError):
    """An experiment file or flag that cannot run; the message says which key."""


# ---------------------------------------------------------------------------------------------- experiment
def load_experiment(path):
    """The experiment file as a dict, every key checked (unknown or missing keys are errors)."""
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = sorted(set(data) - set(EXPERIMENT_KEYS))
    missing = [k for k in EXPERIMENT_KEYS if k not in data and k not in OPTIONAL_KEYS]
    if unknown or missing:
        raise ExperimentError(f"{path}: unknown keys {unknown}" if unknown else f"{path}: missing keys {missing}")
    data.setdefault("base_sft", None)
    data["curve_steps"] = [int(n) for n in data.get("curve_steps") or []]
    data["extra_splits"] = [str(s) for s in data.get("extra_splits") or []]
    if data["goal"] not in GOALS:
        raise ExperimentError(f"{path}: goal must be one of {GOALS}, got {data['goal']!r}")
    for name, m in data["methods"].items():
        if m.get("trainer") not in data["trainers"]:
            raise ExperimentError(f"{path}: method {name}: trainer {m.get('trainer')!r} is not in trainers")
        if m.get("seeds", "main") not in data["seeds"]:
            raise ExperimentError(f"{path}: method {name}: seed group {m.get('seeds')!r} is not in seeds")
        if name == "base" or name.endswith(DYNAMIC):
            raise ExperimentError(f"{path}: method name {name!r} is reserved")
    return data


def _ints(text):
    return [int(s) for s in str(text).split(",") if s.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default=str(DEFAULT_EXPERIMENT), help="experiment file (configs/experiments/study_*.yaml)")
    p.add_argument("--stages", default="data,rollout,train,tune,eval,report", help=f"comma list of {','.join(STAGES)}")
    p.add_argument("--retrain-base", action="store_true", help="add the base stage and use its checkpoint")
    p.add_argument("--install-base", action="store_true", help="copy the retrained base to base_sft.install_to")
    # each of these overrides the experiment file's key of the same name (None: the file's value)
    p.add_argument("--base", help="base checkpoint")
    p.add_argument("--out", help="working directory")
    p.add_argument("--results", help="where the report goes")
    p.add_argument("--data-dir", help="folder with <task>_{train,val,test,ood}.json")
    p.add_argument("--task", help="dataset file prefix")
    p.add_argument("--block-size", type=int)
    p.add_argument("--max-token", type=int)
    p.add_argument("--methods", help="comma list of the experiment's methods (default all)")
    p.add_argument("--seeds", help="training seeds of the 'main' seed group")
    p.add_argument("--ablation-seeds", help="training seeds of the 'ablation' seed group")
    p.add_argument("--split", choices=("test", "val"), help="evaluation split (tune on val only)")
    p.add_argument("--eval-items", type=int, help="first N items of each evaluation split")
    p.add_argument("--rollout-questions", type=int)
    p.add_argument("--rollout-temperature", type=float)
    p.add_argument("--eval-temperature", type=float)
    p.add_argument("--steps", help="denoising steps per block to evaluate (default B, B/2, ..., 1)")
    p.add_argument("--thresholds", help="dynamic thresholds tried on val ('' = none)")
    p.add_argument("--jobs", type=int, help="commands run side by side")
    p.add_argument("--threads", type=int, help="torch threads per command")
    p.add_argument("--t3d-config", help="config of the t3d trainer")
    p.add_argument("--naive-config", help="config of the naive trainer")
    p.add_argument("--train-override", action="append", default=[],
                   help="extra key=value for EVERY trainer (e.g. training.num_train_epochs=3); repeatable")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.argv = argv  # None: from the command line (commands.sh repeats sys.argv)
    try:
        args.exp = resolve(load_experiment(args.experiment), args)
    except ExperimentError as err:
        p.error(str(err))
    return args


def resolve(exp, args):
    """The experiment file with the command line's overrides applied."""
    exp = json.loads(json.dumps(exp))  # a deep copy
    for key in ("base", "out", "results", "data_dir", "task", "block_size", "max_token", "split", "eval_items",
                "rollout_questions", "rollout_temperature", "eval_temperature", "jobs", "threads"):
        value = getattr(args, key)
        if value is not None:
            exp[key] = value
    if args.steps is not None:
        exp["steps"] = _ints(args.steps)
    if args.thresholds is not None:
        exp["thresholds"] = [float(t) for t in args.thresholds.split(",") if t.strip()]
    if args.seeds is not None:
        exp["seeds"]["main"] = _ints(args.seeds)
    if args.ablation_seeds is not None:
        exp["seeds"]["ablation"] = _ints(args.ablation_seeds)
    for trainer, value in (("t3d", args.t3d_config), ("naive", args.naive_config)):
        if value is not None:
            exp["trainers"][trainer]["config"] = value
    if args.methods is not None:
        chosen = [m for m in args.methods.split(",") if m]
        unknown = [m for m in chosen if m not in exp["methods"]]
        if unknown:
            raise ExperimentError(f"unknown method(s) {unknown}; choose from {', '.join(exp['methods'])}")
        exp["methods"] = {m: exp["methods"][m] for m in chosen}
    exp["train_overrides"] = {**(exp["train_overrides"] or {}), **dict(kv.split("=", 1) for kv in args.train_override)}
    exp["steps"] = list(exp["steps"]) if exp["steps"] else default_steps(int(exp["block_size"]))
    return exp


def default_steps(block_size):
    """B, B/2, ..., 1."""
    out = [block_size]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


def _path(value):
    path = Path(value)
    return path if path.is_absolute() else (ROOT / path)


class Experiment:
    def __init__(self, args):
        self.args, self.exp = args, args.exp
        e = self.exp
        self.out = _path(e["out"]).resolve()
        self.B = int(e["block_size"])
        self.steps = e["steps"]
        self.run = pl.Runner(self.out / "logs", verbose=args.verbose)
        base_sft = e.get("base_sft") or {}
        if args.retrain_base and not base_sft:
            raise ExperimentError(f"{args.experiment}: --retrain-base needs base_sft in the experiment file")
        self.base = self.sft_checkpoint() if args.retrain_base else _path(e["base"]).resolve()
        data_dir = _path(e["data_dir"]).resolve()
        self.split_file = {s: data_dir / f"{e['task']}_{s}.json"
                           for s in ("train", "val", "test", "ood", *e["extra_splits"])}
        missing = [str(self.split_file[s]) for s in e["extra_splits"] if not self.split_file[s].exists()]
        if missing:
            raise ExperimentError(f"{args.experiment}: extra_splits: no file {missing[0]}")
        self.questions = self.out / "data" / f"{e['task']}_train_rollout.json"
        self.records = self.out / "data" / f"{e['task']}_train_rollout_renamed.json"
        self.runs = [(m, seed) for m, spec in e["methods"].items() for seed in e["seeds"][spec.get("seeds", "main")]]
        self.labels = {m: spec["label"] for m, spec in e["methods"].items()}

    # ------------------------------------------------------------------------------------ resumable jobs
    def finished(self, name, cmd, outputs):
        """True when job `name` ran to the end with this very command and its outputs exist (it is then not run
        again); a finished job with another command is an error: its outputs belong to other settings."""
        if not all(Path(o).exists() for o in outputs):
            return False
        done = [h for h in self.recorded() if h["stage"] == name and h.get("exit", 0) == 0]
        if not done:
            return False
        line = pl.shell_line(cmd[0], cmd[1]) if isinstance(cmd, tuple) else pl.shell_line(cmd)
        if done[-1]["command"] != line:
            raise pl.StageError(f"job '{name}' finished in {self.out} with another command:\n  {done[-1]['command']}\n"
                                f"now:\n  {line}\nchoose another --out (finished jobs are never redone or overwritten)")
        print(f"[{name}] finished earlier: kept", flush=True)
        return True

    def run_once(self, name, cmd, outputs, cwd=ROOT):
        if not self.finished(name, (cmd, cwd), outputs):
            self.run(name, cmd, cwd)

    # ------------------------------------------------------------------------------------------- stages
    def sft_checkpoint(self):
        cfg = yaml.safe_load(_path(self.exp["base_sft"]["config"]).read_text(encoding="utf-8"))
        return self.out / "base_sft" / "ckpt" / str(cfg["model"]["optimized_name"])

    def stage_base(self):
        sft = self.exp.get("base_sft") or {}
        if not sft:
            raise ExperimentError(f"{self.args.experiment}: the base stage needs base_sft in the experiment file")
        cmd = pl.train_command("sft_sdar.py", sft["config"], {
            "experiment.output_dir": self.out, "experiment.project": "base_sft",
            "training.num_threads": self.exp["threads"], "dataset.optimization_data": self.split_file["train"]})
        self.run_once("base_sft", cmd, [self.sft_checkpoint() / "config.json"])
        if self.args.install_base and sft.get("install_to"):
            dest = _path(sft["install_to"])
            for name in MODEL_FILES:
                if (self.sft_checkpoint() / name).exists():
                    shutil.copy2(self.sft_checkpoint() / name, dest / name)
            print(f"installed {self.sft_checkpoint()} -> {dest}")

    def stage_data(self):
        pl.subset(self.split_file["train"], self.questions, 0, self.exp["rollout_questions"])
        print(f"wrote {self.questions} ({self.exp['rollout_questions']} items)")

    def stage_rollout(self):
        cmd, cwd = pl.rollout_command(self.base, self.questions, self.out, "sdar_sample", block_size=self.B, steps=self.B,
                                      max_token=self.exp["max_token"], temperature=self.exp["rollout_temperature"],
                                      seed=0)
        rollout_file = pl.rollout_output(self.base, self.questions, self.out)
        self.run_once("rollout", cmd, [rollout_file], cwd)
        self.run_once("rename_key", pl.rename_command(rollout_file, self.records), [self.records])

    def trainer(self, method):
        return self.exp["trainers"][self.exp["methods"][method]["trainer"]]

    def checkpoint(self, method, seed, step=None):
        """The run's final checkpoint, or its step checkpoint: `step`, else the method's `checkpoint_step` (a
        stopping step chosen on val; the run still trains its whole schedule so that this checkpoint is the one
        that was chosen)."""
        cfg = yaml.safe_load(_path(self.trainer(method)["config"]).read_text(encoding="utf-8"))
        name = str(cfg["model"]["optimized_name"])
        step = step or self.exp["methods"][method].get("checkpoint_step")
        return self.out / f"{method}_seed{seed}" / "ckpt" / (f"{name}-step{int(step)}" if step else name)

    def train_job(self, method, seed):
        trainer, spec = self.trainer(method), self.exp["methods"][method]
        values = {"model.pretrained_model": self.base, "dataset.optimization_data": self.records,
                  "experiment.output_dir": self.out, "experiment.project": f"{method}_seed{seed}",
                  "training.seed": seed, "training.num_threads": self.exp["threads"], **(spec.get("overrides") or {}),
                  **self.exp["train_overrides"]}
        return f"train_{method}_seed{seed}", pl.train_command(trainer["script"], trainer["config"], values)

    def stage_train(self):
        jobs = [self.train_job(m, s) for m, s in self.runs]
        todo = [(name, cmd) for (name, cmd), (m, s) in zip(jobs, self.runs)
                if not self.finished(name, (cmd, ROOT), [self.checkpoint(m, s) / "config.json"])]
        self.run.parallel(todo, self.exp["jobs"])

    def eval_job(self, name, checkpoints, split, steps=None, thresholds=None, project=None):
        extra = {"evaluation.num_threads": self.exp["threads"]}
        if self.exp["eval_items"]:
            extra["evaluation.max_items"] = self.exp["eval_items"]
        if thresholds:
            extra["sweep.dynamic_thresholds"] = list(thresholds)
        cmd = pl.eval_command(checkpoints, self.split_file[split], self.out, project or name, steps=steps or [],
                              block_size=self.B, max_token=self.exp["max_token"],
                              temperature=self.exp["eval_temperature"], extra=extra)
        if not steps:  # a threshold sweep; eval.py adds its default S=1 static point (cheap; not read back)
            cmd = [c for c in cmd if not c.startswith("sweep.denoising_steps=")] + ["sweep.denoising_steps=null"]
        return name, cmd

    def stage_tune(self):
        """Pick the dynamic thresholds on val: those whose points AUP keeps, the most parallel first."""
        from t3d.common.io import atomic_write_json
        from t3d.eval.aup import aup

        if not self.candidates():
            print("no dynamic thresholds in the experiment: static decoding only")
            return
        name, cmd = self.eval_job("tune_val_dynamic", {"base": self.base}, "val", thresholds=self.candidates())
        self.run_once(name, cmd, [self.out / "thresholds.json"])
        rows = self.sweep_rows(name, "val")
        pts = sorted(((r["tokens_per_forward"], 100 * r["accuracy"], r["dynamic_threshold"]) for r in rows))
        floor = pts[0][1] - 5.0  # t3d.eval.aup's filter: within 5 points of the slowest point
        kept = [tau for _, y, tau in pts if y >= floor]
        chosen = sorted(kept[-int(self.exp["max_thresholds"]):], reverse=True)
        y_max = max(y for _, y, _ in pts)
        score = aup([(x, y) for x, y, tau in pts if tau in chosen], y_max)[0] if y_max > 0 else None
        atomic_write_json(self.out / "thresholds.json", {"candidates": self.candidates(), "chosen": chosen,
                                                         "val_points": pts, "val_aup": score})
        print(f"dynamic thresholds chosen on val: {chosen}")

    def candidates(self):
        return [float(t) for t in self.exp["thresholds"] or []]

    def chosen_thresholds(self):
        if not self.candidates():
            return []
        path = self.out / "thresholds.json"
        if not path.exists():
            raise pl.StageError(f"{path} is missing: run the tune stage first")
        return json.loads(path.read_text(encoding="utf-8"))["chosen"]

    def trained(self):
        """{label: checkpoint} of every run; with curve_steps also each run's step checkpoints
        (<method>_step<N>_seed<s>: a learning curve, one point per saved step)."""
        out = {}
        for m, s in self.runs:
            out.update({f"{m}_step{n}_seed{s}": self.checkpoint(m, s, n) for n in self.exp["curve_steps"]})
            out[f"{m}_seed{s}"] = self.checkpoint(m, s)
        return out

    def checkpoints(self):
        return {"base": self.base, **self.trained()}

    def eval_jobs(self):
        """Static and threshold sweeps of every checkpoint (dealt over `jobs` commands), S = B on ood (a task
        without a shifted split skips it)."""
        split, ckpts = self.exp["split"], self.checkpoints()
        labels, n = list(ckpts), max(1, int(self.exp["jobs"]))
        parts = [labels[i::n] for i in range(min(n, len(labels)))]
        jobs, thresholds = [], self.chosen_thresholds()
        for name in self.report_splits():
            jobs += [self.eval_job(f"eval_{name}_static{i}", {k: ckpts[k] for k in part}, name, self.steps)
                     for i, part in enumerate(parts)]
            if thresholds:
                jobs += [self.eval_job(f"eval_{name}_dynamic{i}", {k: ckpts[k] for k in part}, name,
                                       thresholds=thresholds) for i, part in enumerate(parts)]
        if self.with_ood():
            jobs += [self.eval_job(f"eval_ood_full{i}", {k: ckpts[k] for k in part}, "ood", [self.B])
                     for i, part in enumerate(parts)]
        return jobs

    def with_ood(self):
        """A test evaluation also scores S = B on the task's shifted split, when the task has one."""
        return self.exp["split"] == "test" and self.split_file["ood"].exists()

    def report_splits(self):
        """The evaluation split, then (when it is test) the experiment's extra splits, e.g. a fresh draw of the
        same task family: each gets the full static + dynamic evaluation and its own report table."""
        split = self.exp["split"]
        return [split, *(self.exp["extra_splits"] if split == "test" else [])]

    def eval_finished(self, name, cmd):
        """An eval command that ran to the end with this very command (its sweep is there) is not run again. Another
        command under the same name (e.g. methods added) runs: eval.py itself keeps every finished result."""
        done = [h for h in self.recorded() if h["stage"] == name and h.get("exit", 0) == 0]
        if not done or done[-1]["command"] != pl.shell_line(cmd):
            return False
        try:
            self.sweep_rows(name, self.split_of(name))
        except (OSError, ValueError):
            return False
        print(f"[{name}] finished earlier: kept", flush=True)
        return True

    def split_of(self, name):
        return "val" if name.startswith("tune_val") else name.split("_")[1]

    def stage_eval(self):
        self.run.parallel([(n, c) for n, c in self.eval_jobs() if not self.eval_finished(n, c)], self.exp["jobs"])

    # ------------------------------------------------------------------------------------------- report
    def sweep_rows(self, name, split):
        """eval.py's rows of one of this run's eval commands (a threshold sweep: its threshold rows only)."""
        rows, _ = pl.sweep_rows(self.out, name, self.split_file[split])
        return [r for r in rows if r["sweep_kind"] == "threshold"] if "dynamic" in name else rows

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
        n = len(items) if not self.exp["eval_items"] else min(int(self.exp["eval_items"]), len(items))
        return rows, n

    def split_report(self, split, ood=False):
        """One split's summary, goal, flags, bootstrap comparisons and markdown table."""
        e = self.exp
        rows, n_items = self.rows(split)
        if not rows:
            raise pl.StageError(f"no {split} evaluation results in {self.out}: run the eval stage first")
        ood_rows, n_ood = self.rows("ood") if ood else ([], 0)
        summary = summarize(rows, ood_rows, self.steps, self.B, self.labels)
        comparisons, intervals = bootstrap_comparisons(rows, summary, self.pairs(summary))
        ref = (self.references() or ["t3d"])[0]
        if e["goal"] == "aup":
            goal = goal_check(summary, ref, baselines=e["baselines"], intervals=intervals)
            variants = {m: goal_check(summary, m, baselines=e["baselines"], intervals=intervals) for m in summary
                        if m != ref and m.startswith("t3d_") and not m.endswith(DYNAMIC) and summary[m]["seeds"] > 1}
            table = markdown(summary, self.steps, [goal, *variants.values()], self.B, intervals)
            main_summary = summary
        else:
            recovery = recovery_summary(rows, self.steps, self.labels)
            goal, variants = recovery_goal(recovery, max(self.steps), min(self.steps)), {}
            table = recovery_markdown(recovery, self.steps, goal)
            main_summary = recovery
        flags = full_step_flags(rows, self.B)
        table += "\n" + uncertainty_markdown(summary, flags, comparisons, self.B)
        return {"rows": rows, "n_items": n_items, "ood_rows": ood_rows, "n_ood": n_ood, "summary": summary,
                "main_summary": main_summary, "goal": goal, "variants": variants, "table": table, "flags": flags,
                "comparisons": comparisons, "aup_intervals": intervals}

    def stage_report(self):
        from t3d.common.io import atomic_write_json, atomic_write_text
        from t3d.eval.evaluate import plot_sweep

        e, split = self.exp, self.exp["split"]
        reports = {name: self.split_report(name, ood=(name == split and self.with_ood()))
                   for name in self.report_splits()}
        main = reports[split]
        history = self.history()
        thresholds = (json.loads((self.out / "thresholds.json").read_text(encoding="utf-8"))
                      if (self.out / "thresholds.json").exists() and self.candidates() else None)
        setup = {
            "experiment": _rel(Path(self.args.experiment).resolve()), "description": e.get("description"),
            "base_checkpoint": _rel(self.base), "task": e["task"], "eval_split": split, "eval_items": main["n_items"],
            "ood_items": main["n_ood"], "extra_splits": {x: _rel(self.split_file[x]) for x in self.report_splits()[1:]},
            "block_size": self.B, "steps": self.steps, "max_token": e["max_token"],
            "eval_temperature": e["eval_temperature"], "rollout_questions": e["rollout_questions"],
            "rollout_temperature": e["rollout_temperature"], "rollout_steps_per_block": self.B, "seeds": e["seeds"],
            "trainers": e["trainers"], "train_overrides": e["train_overrides"], "curve_steps": e["curve_steps"],
            "methods": {m: {**(spec.get("overrides") or {}), **({"checkpoint_step": spec["checkpoint_step"]}
                                                                 if spec.get("checkpoint_step") else {})}
                        for m, spec in e["methods"].items()},
            "dynamic_thresholds": thresholds, "bootstrap": {"resamples": unc.RESAMPLES, "seed": unc.SEED, "level": 0.95},
        }
        keep = ("checkpoint", "sweep_kind", "setting", "denoising_steps_per_block", "dynamic_threshold", "accuracy",
                "valid", "answer_rate", "mean_response_length", "mean_nfe", "tokens_per_forward",
                "tokens_per_forward_no_prefill", "decode_seconds")

        def section(r):
            return {"summary": r["main_summary"], "aup_summary": r["summary"], "goal": r["goal"],
                    "variant_goals": r["variants"], "full_step": full_step_table(r["summary"], self.B),
                    "full_step_flags": r["flags"], "comparisons": r["comparisons"], "aup_intervals": r["aup_intervals"],
                    "runs": [{k: x.get(k) for k in keep} for x in r["rows"]]}

        results = _path(e["results"])
        atomic_write_json(results / "results.json", {
            "setup": setup, **section(main), "ood_runs": [{k: r.get(k) for k in keep} for r in main["ood_rows"]],
            "extra_splits": {x: {"items": r["n_items"], **section(r)} for x, r in reports.items() if x != split},
            "timings": {h["stage"]: h["seconds"] for h in history},
            "stage_wall_seconds": self.stage_seconds(),
        })
        for name, r in reports.items():
            suffix = "" if name == split else f"_{name}"
            atomic_write_text(results / f"table{suffix}.md", r["table"])
            plot_sweep(frontier_rows(r["summary"]), results / f"accuracy_vs_tokens_per_forward{suffix}.png",
                       f"{e['task']} {name} (B={self.B}, greedy; trained: mean over seeds)",
                       [{"method": s["label"], "aup": s["aup_mean"]} for s in r["summary"].values()
                        if s["aup_mean"] is not None])
        atomic_write_text(results / "commands.sh", self.commands(history))
        print((results / "table.md").read_text())

    def references(self):
        """reference_method: one method or a list; the first is the one the goal is checked for."""
        ref = self.exp.get("reference_method")
        return [ref] if isinstance(ref, str) else list(ref or [])

    def pairs(self, summary):
        """(A, B) pairs of summary groups to compare on the items: every method against the base (with the same
        decoder), and each reference method against every other method (each pair once)."""
        out = []
        for suffix in ("", DYNAMIC):
            names = [n for n in summary if n.endswith(DYNAMIC) == bool(suffix)]
            base = "base" + suffix
            out += [(n, base) for n in names if n != base]
            for ref in self.references():
                if ref + suffix in summary:
                    out += [(ref + suffix, n) for n in names if n not in (base, ref + suffix)
                            and (n, ref + suffix) not in out]
        return out

    def commands(self, history):
        """commands.sh: the one-command rerun, then every command with its wall time (the data stage as a
        one-liner: the first N training items)."""
        script = pl.commands_script(history, "scripts/run_experiment.py")
        argv = sys.argv[1:] if self.args.argv is None else self.args.argv
        drop = {i for i, a in enumerate(argv) if a == "--stages"}  # every stage, whichever ran last
        rerun = " ".join(pl._portable_arg(a) for i, a in enumerate(argv)
                         if i not in drop and i - 1 not in drop and not a.startswith("--stages="))
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in self.stage_seconds().items())
        data = pl.shell_line([pl.PY, "-c", "import sys, json; json.dump(json.load(open(sys.argv[1]))[:int(sys.argv[3])], "
                              "open(sys.argv[2], \"w\"))", self.split_file["train"], self.questions,
                              str(self.exp["rollout_questions"])], portable=True)
        head, body = script.split('ROOT="${ROOT:-$PWD}"\n', 1)
        return (head + 'ROOT="${ROOT:-$PWD}"\n' + f"# All of it in one command (stage wall times: {stages}):\n"
                f"#   python scripts/run_experiment.py {rerun}\n\n# data\nmkdir -p {pl._portable_arg(self.questions.parent)}\n"
                f"{data}\n" + body)

    def stage_seconds(self, record=None):
        """{stage: wall seconds} summed over every invocation on --out (record: add {stage: seconds}), so a run
        finished in parts reports the time all its parts took."""
        path = self.out / "stage_seconds.json"
        seconds = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if record:
            from t3d.common.io import atomic_write_json

            for stage, value in record.items():
                seconds[stage] = round(seconds.get(stage, 0.0) + value, 1)
            atomic_write_json(path, seconds)
        return seconds

    def recorded(self):
        """Every command run on --out, across invocations (the runner's history.jsonl)."""
        path = self.run.log_dir / "history.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
            if path.exists() else []

    def history(self):
        """The latest successful run of each of this experiment's commands (across invocations on --out), in
        pipeline order."""
        latest = {h["stage"]: h for h in self.recorded() if h.get("exit", 0) == 0}
        names = ["base_sft", "rollout", "rename_key", *(self.train_job(m, s)[0] for m, s in self.runs)]
        if self.candidates():
            names.append("tune_val_dynamic")
        names += [name for name, _ in self.eval_jobs()]
        return [latest[name] for name in names if name in latest]


def _rel(path):
    path = Path(path)
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


# ----------------------------------------------------------------------------------------------- summaries
def method_of(checkpoint):
    return re.sub(r"_seed\d+$", "", checkpoint)


def method_label(group, labels):
    """A summary group's method label, without the decoder ('t3d_dynamic' -> 'T3D')."""
    method = group.removesuffix(DYNAMIC)
    return "base" if method == "base" else labels.get(method, method)


def summarize(rows, ood_rows, steps, block_size, labels):
    """{method (static points) / method_dynamic (threshold points): label, seeds, by_setting {setting:
    accuracy/valid mean+std over seeds, tokens per forward}, aup per seed (y_max = the best accuracy of every row of
    the comparison) and its mean/std/min/max, full-step (S = B) accuracy change vs the base on the split and on ood}.
    labels: {method: label}, in report order."""
    from t3d.eval.aup import aup
    from t3d.eval.evaluate import method_name

    y_max = 100 * max(r["accuracy"] for r in rows)
    groups = {}
    for r in rows:
        name = method_of(r["checkpoint"]) + (DYNAMIC if r["sweep_kind"] == "threshold" else "")
        groups.setdefault(name, []).append(r)
    full = f"S={block_size}"
    order = [n + suffix for n in ("base", *labels) for suffix in ("", DYNAMIC)]
    out = {}
    for name, members in sorted(groups.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
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
        label = method_name(method_label(name, labels), "threshold" if name.endswith(DYNAMIC) else "steps")
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


def goal_check(summary, method="t3d", tolerance=FULL_STEP_TOLERANCE, baselines=("base", "base_dynamic", "naive",
                                                                                 "naive_dynamic"), intervals=None):
    """The aup goal for `method` (T3D as shipped, or a T3D variant): its AUP above every baseline's (base and naive,
    each with the static and the dynamic decoder) with non-overlapping seed ranges (T3D's lowest seed above the
    baseline's highest), T3D taken with its better decoder (by lowest seed), and its S = B accuracy at most 1 point
    below the base's on the split. With `intervals` ({group: AUP 95% bootstrap interval over the items}) the AUP
    must also be above with non-overlapping item intervals (T3D's low end above the baseline's high end)."""
    modes = [n for n in (method, method + DYNAMIC) if n in summary and summary[n]["aup_min"] is not None]
    if not modes:
        return None
    decoder = max(modes, key=lambda n: summary[n]["aup_min"])
    best = summary[decoder]["aup_min"]
    beats = {b: best > summary[b]["aup_max"] for b in baselines if b in summary and summary[b]["aup_max"] is not None}
    change = summary[method]["full_step_change"] if method in summary else None
    kept = change is not None and change >= -tolerance - 1e-9  # accuracies are k/n: exactly 1 point is within
    beats_items = None
    if intervals is not None:
        mine = intervals.get(decoder)
        beats_items = {b: mine is not None and b in intervals and mine["low"] > intervals[b]["high"] for b in beats}
    met = bool(beats) and all(beats.values()) and kept and (beats_items is None or all(beats_items.values()))
    return {"method": method, "t3d_decoder": decoder, "aup_beats": beats, "aup_beats_item_intervals": beats_items,
            "full_step_change": change, "full_step_kept": kept, "met": met}


def frontier_rows(summary):
    """Seed-mean points of every method, in plot_sweep's row shape (a method's two decoders share its name)."""
    return [{"checkpoint": s["label"].removesuffix(" (dynamic τ)"),
             "sweep_kind": "threshold" if name.endswith(DYNAMIC) else "steps",
             "setting": setting, "tokens_per_forward": e["tokens_per_forward"], "accuracy": e["accuracy_mean"]}
            for name, s in summary.items() for setting, e in s["by_setting"].items()]


def _pct(mean, std=None, n=1, signed=False):
    if mean is None:
        return "–"
    text = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return text + (f" ± {100 * std:.1f}" if n > 1 and std is not None else "")


def markdown(summary, steps, goals, block_size, intervals=None):
    settings = [f"S={s}" for s in steps]
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
        if intervals and name in intervals:
            aup_cell += f" (items 95%: {intervals[name]['low']:.1f}–{intervals[name]['high']:.1f})"
        lines.append(f"| {s['label']} | {s['seeds']} | " + " | ".join(accs) + f" | {tpf} | {tpf_np} | {aup_cell} | "
                     f"{_pct(s['full_step_change'], signed=True)} | {_pct(s['ood_full_step_change'], signed=True)} |")
    y_max = next(iter(summary.values()))["y_max"]
    lines += ["", f"AUP: d3LLM's accuracy under parallelism over each checkpoint's points (y_max = {y_max:.1f}%, the best "
              "accuracy in the table); mean ± std over seeds [min, max]" + ("; items 95%: the seed-mean AUP's paired "
              "bootstrap interval over the items" if intervals else "") + ". Δ: S=B accuracy minus the base's, in points."]
    for goal in filter(None, goals):
        beats = ", ".join(f"{b}: {'yes' if v else 'no'}" for b, v in goal["aup_beats"].items())
        if goal.get("aup_beats_item_intervals") is not None:
            beats += "; non-overlapping item intervals: " + ", ".join(
                f"{b}: {'yes' if v else 'no'}" for b, v in goal["aup_beats_item_intervals"].items())
        lines.append(f"Goal for {summary[goal['method']]['label']} (lowest-seed AUP, with its better decoder "
                     f"({goal['t3d_decoder']}), above every "
                     f"baseline's highest; S={block_size} accuracy at most 1 point below the base): AUP above [{beats}]; "
                     f"S={block_size} change "
                     f"{_pct(goal['full_step_change'], signed=True)} points -> {'MET' if goal['met'] else 'NOT met'}.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the recovery goal (results/)
RECOVERY_LABELS = {"t3d": "T3D", "naive": "naive self-distillation"}


def recovery_summary(rows, steps, labels=RECOVERY_LABELS):
    """Static rows -> {method: {label, seeds, by_steps: {S: accuracy mean/std over seeds, valid, tokens/forward}}}."""
    groups = {}
    for row in rows:
        if row.get("sweep_kind", "steps") != "steps":
            continue
        method = method_of(row["checkpoint"])
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
        out[method] = {"label": labels.get(method, method), "seeds": len({r["checkpoint"] for r in members}),
                       "by_steps": by}
    return out


def recovery_goal(summary, full, few):
    """The recovery goal: T3D recovers >= half of the base's (S=B - S=1) gap at S=1; its S=B accuracy drops <= 2
    points."""
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


def recovery_markdown(summary, steps, goal):
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


valid_share = pl.valid_share
commands_script = pl.commands_script


# --------------------------------------------------------------------------------- uncertainty sections
def full_step_table(summary, block_size):
    """Per summary group: its AUP (mean, std, min, max over seeds) beside the method's full-step (S = B) accuracy
    (mean, std, min, max over seeds) and its change vs the base. A dynamic group's full-step accuracy is its
    checkpoints' static S = B accuracy: the decoder changes, the checkpoint does not."""
    full, out = f"S={block_size}", {}
    for name, s in summary.items():
        static = summary.get(name.removesuffix(DYNAMIC), {})
        entry = static.get("by_setting", {}).get(full)
        accs = entry["accuracy"] if entry else []
        out[name] = {"label": s["label"], "seeds": s["seeds"], "aup_mean": s["aup_mean"], "aup_std": s["aup_std"],
                     "aup_min": s["aup_min"], "aup_max": s["aup_max"],
                     "full_step_mean": entry["accuracy_mean"] if entry else None,
                     "full_step_std": entry["accuracy_std"] if entry else None,
                     "full_step_min": min(accs, default=None), "full_step_max": max(accs, default=None),
                     "full_step_change": static.get("full_step_change")}
    return out


def full_step_flags(rows, block_size, tolerance=FULL_STEP_TOLERANCE):
    """Every trained checkpoint whose S = B accuracy is more than `tolerance` below the base's:
    [{checkpoint, accuracy, base, change}]. (Accuracies are k/n: exactly 1 point below is not flagged.)"""
    full = [r for r in rows if r.get("sweep_kind", "steps") == "steps" and r["denoising_steps_per_block"] == block_size]
    base = next((r["accuracy"] for r in full if r["checkpoint"] == "base"), None)
    if base is None:
        return []
    return [{"checkpoint": r["checkpoint"], "accuracy": r["accuracy"], "base": base, "change": r["accuracy"] - base}
            for r in full if r["checkpoint"] != "base" and r["accuracy"] - base < -tolerance - 1e-9]


def bootstrap_comparisons(rows, summary, pairs, resamples=unc.RESAMPLES, seed=unc.SEED):
    """Paired bootstrap intervals over the items for each (A, B) pair of summary groups: the seed-mean accuracy
    difference at every setting both have, and the seed-mean AUP difference; and every group's own seed-mean AUP
    interval (the same resamples).
    -> ([{a, b, a_label, b_label, metric, diff, low, high}] (accuracies as fractions, AUP in its own units),
        {group: {aup, low, high}})."""
    groups = {}
    for r in rows:
        if r.get("run_dir") and (Path(r["run_dir"]) / "items.jsonl").exists():
            name = method_of(r["checkpoint"]) + (DYNAMIC if r["sweep_kind"] == "threshold" else "")
            groups.setdefault(name, {}).setdefault(r["setting"], []).append(r)
    if not groups:
        return [], {}
    first = next(iter(next(iter(groups.values())).values()))[0]
    items = sorted(unc.item_correctness(first["run_dir"]))
    idx = unc.resample_indices(len(items), resamples, seed)
    matrices, aups = {}, {}

    def matrix(name, setting):
        if (name, setting) not in matrices:
            at = sorted(groups[name][setting], key=lambda r: r["checkpoint"])
            matrices[name, setting] = (at, unc.correctness_matrix(at, items))
        return matrices[name, setting][1]

    def resampled_aup(name):
        if name not in aups:
            settings = list(groups[name])
            if len(settings) < 2 or summary[name]["aup_mean"] is None:
                aups[name] = None
            else:
                ckpts = sorted({r["checkpoint"] for r in groups[name][settings[0]]})
                pts = [(statistics.fmean(r["tokens_per_forward"] for r in groups[name][s]), matrix(name, s))
                       for s in settings]
                if any(sorted(r["checkpoint"] for r in groups[name][s]) != ckpts for s in settings):
                    aups[name] = None  # a seed misses a setting: no per-seed AUP to resample
                else:
                    # per seed, its own tokens per forward (as the summary's AUP): one points list per checkpoint
                    per_seed = []
                    for k, ckpt in enumerate(ckpts):
                        tpf = [next(r["tokens_per_forward"] for r in groups[name][s] if r["checkpoint"] == ckpt)
                               for s in settings]
                        per_seed.append([(x, c[k:k + 1]) for x, (_, c) in zip(tpf, pts)])
                    obs, res = zip(*(unc.resampled_aup(p, idx, summary[name]["y_max"]) for p in per_seed))
                    aups[name] = (float(statistics.fmean(obs)), sum(res) / len(res))
        return aups[name]

    out = []
    for a, b in pairs:
        if a not in groups or b not in groups:
            continue
        common = [s for s in groups[a] if s in groups[b]]
        for setting in common:
            d = unc.paired_difference(matrix(a, setting), matrix(b, setting), idx)
            out.append({"a": a, "b": b, "a_label": summary[a]["label"], "b_label": summary[b]["label"],
                        "metric": setting, **d})
        ra, rb = resampled_aup(a), resampled_aup(b)
        if ra is not None and rb is not None:
            lo, hi = unc.interval(ra[1] - rb[1])
            out.append({"a": a, "b": b, "a_label": summary[a]["label"], "b_label": summary[b]["label"],
                        "metric": "AUP", "diff": ra[0] - rb[0], "low": lo, "high": hi})
    intervals = {}
    for name in groups:
        r = resampled_aup(name) if name in summary else None
        if r is not None:
            lo, hi = unc.interval(r[1])
            intervals[name] = {"aup": r[0], "low": lo, "high": hi}
    return out, intervals


def _range(mean, std, lo, hi, n, scale=1.0, digits=1):
    if mean is None:
        return "–"
    text = f"{scale * mean:.{digits}f}"
    if n > 1:
        text += f" ± {scale * std:.{digits}f} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"
    return text


def uncertainty_markdown(summary, flags, comparisons, block_size):
    """The report's uncertainty sections: AUP beside full-step accuracy, the flagged checkpoints, and the paired
    bootstrap intervals of method-vs-method differences."""
    table = full_step_table(summary, block_size)
    lines = [f"### AUP beside full-step (S={block_size}) accuracy", "",
             f"| method | seeds | AUP | S={block_size} acc % | Δ S={block_size} vs base |", "|---|---:|---:|---:|---:|"]
    for t in table.values():
        lines.append(f"| {t['label']} | {t['seeds']} | "
                     f"{_range(t['aup_mean'], t['aup_std'], t['aup_min'], t['aup_max'], t['seeds'])} | "
                     f"{_range(t['full_step_mean'], t['full_step_std'], t['full_step_min'], t['full_step_max'], t['seeds'], 100)} | "
                     f"{_pct(t['full_step_change'], signed=True)} |")
    lines += ["", "Cells: mean ± sample std over seeds [min, max]. A dynamic row's S=B accuracy is its checkpoints' "
              "static S=B accuracy.", ""]
    if flags:
        lines.append(f"**Checkpoints more than 1 point below the base at S={block_size}** (base "
                     f"{100 * flags[0]['base']:.1f}%): " + ", ".join(
                         f"{f['checkpoint']} {100 * f['accuracy']:.1f}% ({100 * f['change']:+.1f})" for f in flags) + ".")
    else:
        lines.append(f"No checkpoint is more than 1 point below the base at S={block_size}.")
    if comparisons:
        metrics = list(dict.fromkeys(c["metric"] for c in comparisons))
        lines += ["", "### Paired differences with 95% bootstrap intervals over the items", "",
                  "| A − B | " + " | ".join(f"{m} (points)" if m != "AUP" else "AUP" for m in metrics) + " |",
                  "|---|" + "---:|" * len(metrics)]
        by_pair = {}
        for c in comparisons:
            by_pair.setdefault((c["a_label"], c["b_label"]), {})[c["metric"]] = c
        for (a, b), cells in by_pair.items():
            row = []
            for m in metrics:
                c = cells.get(m)
                scale = 1.0 if m == "AUP" else 100.0
                row.append("" if c is None else f"{scale * c['diff']:+.1f} [{scale * c['low']:+.1f}, {scale * c['high']:+.1f}]")
            lines.append(f"| {a} − {b} | " + " | ".join(row) + " |")
        lines += ["", f"Seed-mean differences; intervals: {unc.RESAMPLES} paired resamples of the items (numpy seed "
                  f"{unc.SEED}), accuracy points or AUP units, tokens per forward and y_max held fixed. An interval "
                  "that excludes 0 is a difference the items resolve; it says nothing about seed-to-seed spread."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if args.retrain_base and "base" not in stages:
        stages.insert(0, "base")
    try:
        exp = Experiment(args)
    except ExperimentError as err:
        sys.exit(f"run_experiment: {err}")
    pl.run_stages(exp, stages, STAGES, "run_experiment",
                  on_stage_done=lambda stage, seconds: exp.stage_seconds({stage: seconds}))


if __name__ == "__main__":
    try:
        main()
    except pl.StageError as err:
        sys.exit(f"run_experiment: {err}")

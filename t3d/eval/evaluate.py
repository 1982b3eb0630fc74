"""Few-step evaluation: decode with the shared rollout, grade, report accuracy beside decoding cost.

One run evaluates every (checkpoint x decoding setting) of the config, loading each checkpoint once.
Per evaluation it writes <output_dir>/<project>/results/<checkpoint>-<dataset>/<settings>/ with
metrics.json, metrics.md, items.jsonl (one line per replica) and config.yaml (the resolved config of that
evaluation); <settings> names every setting that changes the result (e.g. B4-S1-low_confidence_static-T0.1-
len64-k1-seed0), so evaluations of other settings never replace each other; a finished result is only
replaced by a rerun of the same settings (said on stderr when its weights or data changed). With more than one evaluation it also writes results/sweep-<dataset>/ with sweep.json,
sweep.md and sweep.png (accuracy against tokens per forward, one line per checkpoint, with each method's AUP).
Under `accelerate launch` decoding is split across processes; grading and writing happen on the main one.
"""
import copy
import gc
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from t3d.eval import sandbox
from t3d.eval.aup import aup
from t3d.common.paths import output_root
from t3d.model.checkpoint import check_checkpoint, resolve_checkpoint
from t3d.common.config import ConfigError, save_config
from t3d.eval.grading import NO_ANSWER, NO_CODE, code_tests, grade_items, pass_at_k
from t3d.common.io import DataError, atomic_write_json, atomic_write_jsonl, atomic_write_text, check_output_dir
from t3d.tasks.prompting import DATA_TYPES
from t3d.decode.rollout import (number_setting, check_checkpoint_path, check_job_config, dataset_name, decode_config, item_error,
                      load_items, dataset_options, rollout, setup, summarize)

DYNAMIC = "low_confidence_dynamic"


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Setting:
    """One decoding setting of a sweep: S steps per block, strategy, threshold; `kind` says what is swept."""

    steps: int
    strategy: str
    threshold: float
    kind: str = "steps"  # "steps" (a denoising_steps value) or "threshold" (a dynamic_thresholds value)

    @property
    def label(self):
        if self.kind == "threshold":
            return f"τ={self.threshold:g}"
        return f"S={self.steps}" + (f" τ={self.threshold:g}" if self.strategy == DYNAMIC else "")


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _number_list(value, key, cast):
    value = _plain(value)
    if value is None:
        return None
    kinds = (int,) if cast is int else (int, float)
    if not isinstance(value, list) or not value or any(isinstance(v, bool) or not isinstance(v, kinds) for v in value):
        what = "integers (e.g. [4, 2, 1])" if cast is int else "numbers (e.g. [0.95, 0.9])"
        raise ConfigError(f"{key} must be a non-empty list of {what} or null, got {value!r}")
    return [cast(v) for v in value]


def sweep_settings(cfg):
    """The settings of this run, in config order, duplicates removed."""
    rollout_cfg = cfg.rollout
    strategy, tau = str(rollout_cfg.remasking_strategy), float(rollout_cfg.dynamic_threshold)
    steps = _number_list(cfg.sweep.denoising_steps, "sweep.denoising_steps", int)
    thresholds = _number_list(cfg.sweep.dynamic_thresholds, "sweep.dynamic_thresholds", float) or []
    if steps is not None and any(not 1 <= s <= int(rollout_cfg.block_size) for s in steps):
        raise ConfigError(f"sweep.denoising_steps must lie in [1, rollout.block_size={rollout_cfg.block_size}], got {steps}")
    if any(not 0 < t <= 1 for t in thresholds):
        raise ConfigError(f"sweep.dynamic_thresholds must lie in (0, 1], got {thresholds}")
    out = [Setting(s, strategy, tau) for s in (steps or [int(rollout_cfg.denoising_steps_per_block)])]
    # The dynamic rule unmasks at least the static schedule's count, so S = B means "one or more per step".
    out += [Setting(int(rollout_cfg.block_size), DYNAMIC, t, "threshold") for t in thresholds]
    return list(dict.fromkeys(out))


def _label_of(path):
    name = Path(str(path).rstrip("/")).name or str(path)
    return re.sub(r"[^\w.+=-]", "_", name)


def checkpoint_list(cfg):
    """[(label, path)] from sweep.checkpoints, else evaluation.checkpoint_path (a string or a list)."""
    spec = _plain(cfg.sweep.checkpoints)
    key = "sweep.checkpoints"
    if spec is None:
        spec, key = _plain(cfg.evaluation.checkpoint_path), "evaluation.checkpoint_path"
    entries = []
    if isinstance(spec, dict):
        entries = [(str(label), path) for label, path in spec.items()]
    elif isinstance(spec, (list, str)) or spec is None:
        for entry in spec if isinstance(spec, list) else [spec]:
            if isinstance(entry, dict) and set(entry) == {"label", "path"}:
                entries.append((str(entry["label"]), entry["path"]))
            elif isinstance(entry, str) and "=" in entry:
                label, path = entry.split("=", 1)
                entries.append((label.strip(), path.strip()))
            elif isinstance(entry, str) or entry is None:
                entries.append((None, entry))
            else:
                raise ConfigError(f"{key}: entry {entry!r} is not a path, 'label=path' or {{label:, path:}}")
    else:
        raise ConfigError(f"{key} must be a path, a list of paths or a mapping label -> path, got {spec!r}")
    if not entries:
        raise ConfigError(f"{key} is empty")
    for label, path in entries:  # an empty path would silently evaluate the embedded default
        check_checkpoint_path(path, f"{key}" + (f" entry '{label}'" if label else ""))
    out = [(_label_of(label if label else path), path) for label, path in entries]
    labels = [label for label, _ in out]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(f"{key}: several checkpoints are named {duplicates[0]!r}; label them "
                          f"(sweep.checkpoints=[base=path1,t3d=path2])")
    return out


def _with(cfg, **dotted):
    out = copy.deepcopy(cfg)
    for key, value in dotted.items():
        OmegaConf.update(out, key, value, merge=False)
    return out


# ------------------------------------------------------------------------------------------------- dataset
def validate_items(items, data_type, source):
    """Fail before any model is loaded if an item cannot be decoded or graded (one line naming it)."""
    if data_type not in DATA_TYPES:
        raise DataError(f"unknown data_type '{data_type}': expected one of {', '.join(DATA_TYPES)}")
    for i, item in enumerate(items):
        err = item_error(item, data_type)
        if err is None and data_type == "code":
            try:
                code_tests(item, i)
            except DataError as exc:
                err = str(exc).removeprefix(f"item {i}: ")
        elif err is None:
            gold = item.get("ground_truth_answer")
            if gold is None or not str(gold).strip():
                err = f"no 'ground_truth_answer' to grade against (data_type={data_type})"
            elif isinstance(gold, (list, dict, bool)):  # str() of it would be graded as the answer
                err = f"'ground_truth_answer' is a {type(gold).__name__}, expected a string or number"
        if err is not None:
            ident = f" (id {item['id']})" if isinstance(item.get("id"), (str, int)) else ""
            raise DataError(f"{source}: item {i}{ident}: {err}")


# ------------------------------------------------------------------------------------------------- metrics
def compute_metrics(results, correct, stats, num_responses, data_type):
    """Accuracy and decoding cost of one evaluation.

    results: rollout() output (items with an `error` count as wrong, unanswered replicas);
    correct: per item, per replica bools (an error item may have an empty list);
    stats: {"seconds": decoding wall time, "batch_forwards": ...}.
    accuracy is over all items x replicas; with k > 1 replicas, pass@1 and pass@k (unbiased estimator,
    averaged over items) are added. answer_rate: share of responses with an extractable answer.
    """
    k = int(num_responses)
    n_items = len(results)
    counts = [sum(map(bool, c)) for c in correct]
    sentinel = NO_CODE if data_type == "code" else NO_ANSWER
    answered = sum(x != sentinel for item in results if "error" not in item for x in item["extracted_output"])
    finished = sum(bool(f) for item in results if "error" not in item for f in item["finished"])
    cost = summarize(results, stats)
    metrics = {
        "items": n_items,
        "responses": n_items * k,
        "failed_items": cost.pop("failed_items"),
        "accuracy": sum(counts) / max(n_items * k, 1),
    }
    if k > 1:
        for kk in sorted({1, k}):
            metrics[f"pass@{kk}"] = float(pass_at_k([k] * n_items, counts, kk).mean()) if n_items else 0.0
    metrics["answer_rate"] = answered / max(n_items * k, 1)
    metrics["finished_rate"] = finished / max(n_items * k, 1)
    cost.pop("sequences")
    seconds = cost.pop("seconds")
    metrics.update(cost)
    metrics["decode_seconds"] = seconds
    return metrics


def item_records(results, correct, data_type, with_steps=True):
    """One record per (item, replica) for items.jsonl; an undecodable item gives one record with `error`."""
    out = []
    for index, (item, marks) in enumerate(zip(results, correct)):
        gold = item.get("ground_truth_answer") if data_type != "code" else None
        base = {"index": index, **({"id": item["id"]} if "id" in item else {})}
        if "error" in item:
            out.append({**base, "replica": None, "error": item["error"], "gold": gold, "correct": False})
            continue
        for r in range(len(item["full_output"])):
            rec = {**base, "replica": r, "prompt": item["prompt"], "output": item["full_output"][r],
                   "extracted": item["extracted_output"][r], "gold": gold, "correct": bool(marks[r]),
                   "nfe": item["nfe"][r], "length": item["response_length"][r], "finished": item["finished"][r]}
            if with_steps:
                rec["step_map"] = item["step_map"][r]
            out.append(rec)
    return out


# -------------------------------------------------------------------------------------------------- tables
COLUMNS = [  # (metrics key, header, format); pass@ columns are added after accuracy when k > 1
    ("checkpoint", "checkpoint", "{}"), ("setting", "setting", "{}"), ("accuracy", "accuracy", "{:.4f}"),
    ("answer_rate", "answered", "{:.3f}"), ("mean_response_length", "mean len", "{:.1f}"),
    ("mean_nfe", "NFE/sample", "{:.2f}"), ("tokens_per_forward", "tok/fwd", "{:.3f}"),
    ("tokens_per_forward_no_prefill", "tok/fwd w/o prefill", "{:.3f}"),
    ("tokens_per_second", "tok/s", "{:.1f}"), ("wall_seconds", "wall s", "{:.1f}"),
]


def markdown_table(rows):
    """The summary table, one row per evaluation (all rows of a run share k = num_response_per_task)."""
    k = max(int(r.get("num_response_per_task", 1)) for r in rows)
    cols = list(COLUMNS)
    if k > 1:
        cols[3:3] = [(f"pass@{kk}", f"pass@{kk}", "{:.4f}") for kk in sorted({1, k})]
    lines = ["| " + " | ".join(head for _, head, _ in cols) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(cols))) + "|"]
    lines += ["| " + " | ".join(fmt.format(r[key]) if r.get(key) is not None else "" for key, _, fmt in cols) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def method_name(checkpoint, sweep_kind):
    return checkpoint + (" (dynamic τ)" if sweep_kind == "threshold" else "")


def aup_rows(rows):
    """AUP (utils/aup.py) of every method of a sweep with at least two settings; a method is a checkpoint's
    S sweep or its dynamic-threshold sweep. y_max is the sweep's best accuracy, so the scores compare only
    within this sweep; points are (tokens per forward, accuracy %), the prefill forward included."""
    y_max = 100 * max((r["accuracy"] for r in rows), default=0.0)
    methods = {}
    for r in rows:
        if r["tokens_per_forward"] > 0:  # nothing decoded: no point
            methods.setdefault((r["checkpoint"], r["sweep_kind"]), []).append(r)
    out = []
    for (checkpoint, kind), mine in methods.items():
        if len(mine) < 2 or y_max <= 0:
            continue
        score, used = aup([(r["tokens_per_forward"], 100 * r["accuracy"]) for r in mine], y_max)
        out.append({"method": method_name(checkpoint, kind), "checkpoint": checkpoint, "sweep_kind": kind,
                    "aup": score, "points": len(mine), "points_used": used, "y_max": y_max,
                    "settings": [r["setting"] for r in mine]})
    return out


def aup_markdown(scores):
    if not scores:
        return ""
    lines = ["", f"AUP (d3LLM's accuracy under parallelism, y_max = {scores[0]['y_max']:.2f}%; points more than 5 "
             "below a method's lowest-parallelism accuracy are dropped):", "",
             "| method | AUP | points used |", "|---|---:|---:|"]
    lines += [f"| {s['method']} | {s['aup']:.2f} | {s['points_used']} of {s['points']} |" for s in scores]
    return "\n".join(lines) + "\n"


def metrics_markdown(metrics):
    """metrics.md: a title and a two-column metric | value table."""
    title = f"# {metrics['checkpoint']} on {metrics['dataset']} ({metrics['setting']}, block size {metrics['block_size']})"
    lines = [title, "", "| metric | value |", "|---|---:|"]
    for key, value in metrics.items():
        if isinstance(value, dict):
            continue  # settings and input fingerprints: in metrics.json
        if isinstance(value, float):
            value = f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
        lines.append(f"| {key} | {value} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- plot
def plot_sweep(rows, path, title, scores=()):
    """PNG of accuracy against tokens per forward: one colour per checkpoint, S sweeps as solid lines,
    threshold sweeps dashed, every point labelled with its setting, AUP (aup_rows) in the legend. With more than
    four checkpoints only the first one's points are labelled (the others' settings follow the same order) and
    the legend sits beside the axes. Written atomically."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state (Agg renders the PNG)

    checkpoints = list(dict.fromkeys(r["checkpoint"] for r in rows))
    crowded = len(checkpoints) > 4
    fig = Figure(figsize=(11.5, 5.2) if crowded else (7.5, 4.8), dpi=150)
    ax = fig.subplots()
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    aup_of = {s["method"]: s["aup"] for s in scores}
    for ci, name in enumerate(checkpoints):
        colour = colours[ci % len(colours)]
        mine = [r for r in rows if r["checkpoint"] == name]
        for kind, style, marker, suffix in (("steps", "-", "o", ""), ("threshold", "--", "s", " (dynamic τ)")):
            pts = sorted((r for r in mine if r["sweep_kind"] == kind), key=lambda r: r["tokens_per_forward"])
            if pts:
                method = method_name(name, kind)
                label = method + (f", AUP {aup_of[method]:.1f}" if method in aup_of else "")
                ax.plot([r["tokens_per_forward"] for r in pts], [r["accuracy"] for r in pts], linestyle=style,
                        marker=marker, color=colour, label=label, linewidth=1.8, markersize=6)
        # One label per distinct point ("S=4, τ=0.9" when settings coincide); checkpoints alternate
        # above / below their points so equal results stay readable.
        spots = {}
        for r in mine:
            spots.setdefault((round(r["tokens_per_forward"], 3), round(r["accuracy"], 3)), []).append(r["setting"])
        for (x, y), names in (spots.items() if not crowded or ci == 0 else ()):
            ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(5, 7 if ci % 2 == 0 else -13),
                        fontsize=8, color=colour)
    ax.set_xlabel("tokens per forward (decoded tokens / NFE, higher = faster)")
    ax.set_ylabel("accuracy")
    accs = [r["accuracy"] for r in rows]
    pad = max(0.05, 0.15 * (max(accs) - min(accs)))  # zoom on the spread, never outside [0, 1]
    ax.set_ylim(max(0.0, min(accs) - pad) - 0.02, min(1.0, max(accs) + pad) + 0.02)
    ax.margins(x=0.1)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=11)
    if crowded:
        ax.legend(title="method", fontsize=8, title_fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(title="method", fontsize=9, title_fontsize=9, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------------------------- runs
def results_root(cfg):
    base = Path(cfg.experiment.output_dir) if cfg.experiment.output_dir else output_root()
    return base / str(cfg.experiment.project) / "results"


_NOT_RESULT_KEYS = ("max_active", "batch_size", "num_task_per_step", "tensor_parallel_size")  # batching only


def result_settings(cfg, data_file, ckpt_path):
    """Every setting that changes an evaluation's numbers, as {config key: value} (recorded in metrics.json)."""
    r = cfg.rollout
    out = {f"rollout.{key}": _plain(r[key]) for key in r if key not in _NOT_RESULT_KEYS}
    if str(r.remasking_strategy) != DYNAMIC:
        del out["rollout.dynamic_threshold"]  # unused by the static rule
    out.update({
        "evaluation.checkpoint_path": str(ckpt_path), "evaluation.eval_dataset": str(data_file),
        "evaluation.data_type": str(cfg.evaluation.data_type), "evaluation.max_items": cfg.evaluation.max_items,
        "execute.test_time_limit": _plain(cfg.execute.test_time_limit), "execute.memory_mb": int(cfg.execute.memory_mb),
    })
    for key in ("dataset_split", "dataset_subset", "dataset_columns", "dataset_answer_format"):  # what the items are
        if cfg.evaluation.get(key) is not None:
            out[f"evaluation.{key}"] = _plain(cfg.evaluation[key])
    return out


def run_name(cfg):
    """Readable directory name of an evaluation's settings, e.g. B4-S1-low_confidence_static-T0.1-len64-k1-seed0
    (top-k, top-p, max_items, random init, think, dtype and stop strings appear only when set)."""
    r = cfg.rollout
    parts = [f"B{r.block_size}", f"S{r.denoising_steps_per_block}", str(r.remasking_strategy)]
    if str(r.remasking_strategy) == DYNAMIC:
        parts.append(f"tau{float(r.dynamic_threshold):g}")
    parts.append(f"T{float(r.temperature):g}")
    if int(r.top_k):
        parts.append(f"topk{r.top_k}")
    if float(r.top_p) < 1:
        parts.append(f"topp{float(r.top_p):g}")
    parts += [f"len{r.max_token}", f"k{r.num_response_per_task}", f"seed{r.seed}"]
    if cfg.evaluation.max_items:
        parts.append(f"first{cfg.evaluation.max_items}")
    if float(r.random_init_ratio):
        parts.append(f"rinit{float(r.random_init_ratio):g}")
    if r.start_with_think:
        parts.append("think")
    if str(r.dtype) != "auto":
        parts.append(str(r.dtype))
    if r.stop_token_list:
        parts.append("stop" + hashlib.sha256("\0".join(map(str, r.stop_token_list)).encode()).hexdigest()[:6])
    return "-".join(parts)


def _finished(run_dir):
    try:
        return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def check_finished(run_dir, settings, restart):
    """Refuse to replace a finished result of other settings (unless restart); the same settings rerun."""
    if restart or not (run_dir / "metrics.json").is_file():
        return
    old = (_finished(run_dir) or {}).get("settings")
    if old == settings:
        return
    if not isinstance(old, dict):
        what = "a result without recorded settings"
    else:
        keys = [k for k in settings if old.get(k) != settings[k]] + [k for k in old if k not in settings]
        what = "a result of other settings: " + ", ".join(f"{k}={old.get(k)!r} (now {settings.get(k)!r})" for k in keys)
    raise ConfigError(f"{run_dir}/metrics.json holds {what}; choose another experiment.project or output_dir, "
                      "or pass evaluation.restart=true to replace it")


def evaluate(cfg, state, model, tokenizer, stop_ids, items, *, label, setting, ckpt_path, run_dir, load_seconds=0.0,
             data_file=None):
    """Decode, grade and write one (checkpoint, setting) evaluation. Returns its metrics (None off-main)."""
    data_type = str(cfg.evaluation.data_type)
    k = int(cfg.rollout.num_response_per_task)
    started = time.perf_counter()
    results, stats = rollout(
        model, tokenizer, items, data_type=data_type, decode_cfg=decode_config(cfg.rollout),
        num_responses=k, seed=int(cfg.rollout.seed),
        batch_size=min(int(cfg.rollout.batch_size or 0) or 10**9, int(cfg.rollout.max_active)),
        start_with_think=bool(cfg.rollout.start_with_think), stop_ids=stop_ids,
        partial_prefix=run_dir / "decode", state=state, checkpoint_path=str(ckpt_path),
        restart=bool(cfg.evaluation.restart), data_source=data_file,
    )
    decode_seconds = time.perf_counter() - started
    if results is None:
        return None
    graded_at = time.perf_counter()
    decoded = [item for item in results if "error" not in item]
    marks = iter(grade_items(decoded, data_type, timeout=cfg.execute.test_time_limit,
                             memory_mb=int(cfg.execute.memory_mb), workers=int(cfg.execute.num_chunk) or None))
    correct = [[False] * k if "error" in item else next(marks) for item in results]
    grade_seconds = time.perf_counter() - graded_at
    for item in results:
        if "error" in item:
            print(f"{cfg.evaluation.eval_dataset}: {item['error']} (counted wrong)", file=sys.stderr)

    metrics = {
        "checkpoint": label, "checkpoint_path": str(ckpt_path), "dataset": dataset_name(cfg),
        "data_type": data_type, "setting": setting.label, "sweep_kind": setting.kind,
        "block_size": int(cfg.rollout.block_size), "denoising_steps_per_block": setting.steps,
        "remasking_strategy": setting.strategy, "dynamic_threshold": setting.threshold,
        "temperature": float(cfg.rollout.temperature), "max_token": int(cfg.rollout.max_token),
        "num_response_per_task": k, "seed": int(cfg.rollout.seed), "max_items": cfg.evaluation.max_items,
    }
    metrics.update(compute_metrics(results, correct, {**stats, "seconds": decode_seconds}, k, data_type))
    metrics["grade_seconds"] = grade_seconds
    metrics["wall_seconds"] = decode_seconds + grade_seconds
    metrics["load_seconds"] = load_seconds  # once per checkpoint, shared by its settings
    metrics["run_dir"] = str(run_dir)
    metrics["settings"] = result_settings(cfg, data_file, ckpt_path)
    metrics["inputs"] = {key: stats["inputs"][key] for key in ("weights", "tokenizer", "data")}
    if data_type == "code":  # how the generated code was confined (README: code sandbox)
        metrics["sandbox"] = sandbox.isolation()

    old = _finished(run_dir)
    if old and old.get("inputs") not in (None, metrics["inputs"]):
        changed = [key for key in metrics["inputs"] if old["inputs"].get(key) != metrics["inputs"][key]]
        print(f"note: replacing the finished result in {run_dir} (accuracy {old.get('accuracy')}): its "
              f"{' and '.join(changed)} changed since", file=sys.stderr)
    atomic_write_jsonl(run_dir / "items.jsonl",
                       item_records(results, correct, data_type, bool(cfg.evaluation.output_unmasking_history)))
    atomic_write_json(run_dir / "metrics.json", metrics)
    atomic_write_text(run_dir / "metrics.md", metrics_markdown(metrics))
    save_config(cfg, run_dir)
    for partial in run_dir.glob("decode.partial.rank*.jsonl"):
        partial.unlink()
    print(f"{label} {setting.label}: accuracy {metrics['accuracy']:.4f}, tokens/forward "
          f"{metrics['tokens_per_forward']:.3f} -> {run_dir}", file=sys.stderr)
    return metrics


def _check_config(cfg):
    if str(cfg.model_base) != "sdar":
        raise ConfigError(f"model_base '{cfg.model_base}' is not supported: eval.py evaluates SDAR block-diffusion models")
    if int(cfg.evaluation.num_node) != 1 or int(cfg.evaluation.node_index) != 0:
        raise ConfigError("evaluation.num_node must be 1 for eval.py (metrics need the whole dataset); "
                          "scale out with `accelerate launch` instead")
    check_job_config(cfg)
    ex = cfg.execute
    if number_setting(ex, "execute.num_chunk") < 0:
        raise ConfigError(f"execute.num_chunk must be >= 0 (0 = one per CPU core), got {ex.num_chunk}")
    if number_setting(ex, "execute.memory_mb") < 1:
        raise ConfigError(f"execute.memory_mb must be >= 1, got {ex.memory_mb}")
    limit = ex.test_time_limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0):
        raise ConfigError(f"execute.test_time_limit must be a positive number of seconds or null, got {limit!r}")
    if number_setting(cfg.evaluation, "evaluation.num_threads") < 0:
        raise ConfigError(f"evaluation.num_threads must be >= 0 (0 = torch's default), got {cfg.evaluation.num_threads}")


def _run_dirs(root, label, runs, cfg):
    return {setting: root / f"{label}-{dataset_name(cfg)}" / run_name(run_cfg) for setting, run_cfg in runs.items()}


def _evaluate_checkpoint(cfg, label, path, runs, items, root, data_file):
    """Load one checkpoint once and evaluate every setting with it. Returns the metrics rows (main only)."""
    loaded_at = time.perf_counter()
    state, model, tokenizer, resolved, stop_ids = setup(_with(cfg, **{"evaluation.checkpoint_path": path}))
    load_seconds = time.perf_counter() - loaded_at
    rows = []
    for setting, run_dir in _run_dirs(root, label, runs, cfg).items():
        run_cfg = _with(runs[setting], **{"evaluation.checkpoint_path": path, "sweep.checkpoints": None})
        row = evaluate(run_cfg, state, model, tokenizer, stop_ids, items, label=label, setting=setting,
                       ckpt_path=resolved, run_dir=run_dir, load_seconds=load_seconds, data_file=data_file)
        if row is not None:
            rows.append(row)
    del model
    gc.collect()
    if state.device.type == "cuda":
        torch.cuda.empty_cache()
    return state, rows


def write_sweep(rows, scores, cfg, root):
    """results/sweep-<dataset>/: sweep.json ({"rows": [...], "aup": [...]}), sweep.md, sweep.png, the config."""
    dataset, block = dataset_name(cfg), cfg.rollout.block_size
    sweep_dir = root / f"sweep-{dataset}"
    atomic_write_json(sweep_dir / "sweep.json", {"rows": rows, "aup": scores})
    atomic_write_text(sweep_dir / "sweep.md",
                      f"# {dataset}: block size {block}\n\n" + markdown_table(rows) + aup_markdown(scores))
    k = rows[0]["num_response_per_task"]
    title = (f"{dataset}: accuracy vs tokens per forward (block size {block}, T={float(cfg.rollout.temperature):g}"
             + (f", k={k})" if k > 1 else ")"))
    plot_sweep(rows, sweep_dir / "sweep.png", title, scores)
    save_config(cfg, sweep_dir)
    print(f"wrote {sweep_dir}/sweep.md, sweep.json, sweep.png", file=sys.stderr)
    return sweep_dir


def run_eval_job(cfg):
    """eval.py: every (checkpoint x setting) of the config. Returns the metrics rows (None off-main)."""
    _check_config(cfg)
    data_type = str(cfg.evaluation.data_type)
    checkpoints, settings = checkpoint_list(cfg), sweep_settings(cfg)
    runs = {s: _with(cfg, **{"rollout.denoising_steps_per_block": s.steps, "rollout.remasking_strategy": s.strategy,
                             "rollout.dynamic_threshold": s.threshold}) for s in settings}
    for run_cfg in runs.values():
        decode_config(run_cfg.rollout)  # invalid settings fail before any model is loaded
    root = check_output_dir(results_root(cfg), "experiment.output_dir")
    data_file, items = load_items(cfg.evaluation.eval_dataset, cfg.evaluation.max_items,
                                  **dataset_options(cfg.evaluation))
    validate_items(items, data_type, data_file)
    resolved = {label: resolve_checkpoint(path) for label, path in checkpoints}
    for label, path in checkpoints:  # every checkpoint and finished result checked before the first decode
        check_checkpoint(resolved[label])
        for setting, run_dir in _run_dirs(root, label, runs, cfg).items():
            check_finished(run_dir, result_settings(runs[setting], data_file, resolved[label]),
                           bool(cfg.evaluation.restart))

    threads = torch.get_num_threads()
    if not torch.cuda.is_available() and int(cfg.evaluation.num_threads) > 0:
        torch.set_num_threads(int(cfg.evaluation.num_threads))
    try:
        rows = []
        for label, path in checkpoints:
            state, mine = _evaluate_checkpoint(cfg, label, path, runs, items, root, data_file)
            rows += mine
    finally:
        torch.set_num_threads(threads)  # process-wide: leave it as found (tests, notebooks)
    if not state.is_main_process:
        return None
    scores = aup_rows(rows)
    if len(rows) > 1:
        write_sweep(rows, scores, cfg, root)
    print(markdown_table(rows) + aup_markdown(scores), end="")
    return rows

"""Few-step evaluation: decode with the shared rollout, grade, report accuracy beside decoding cost.

One run evaluates every (checkpoint x decoding setting) of an EvalJob (t3d.eval.settings), loading each checkpoint
once, and only if one of its evaluations is not finished yet. Per evaluation it writes metrics.json, metrics.md,
items.jsonl (one line per replica) and config.yaml (the resolved config of that evaluation) to
results/<checkpoint>-<weights id>/<dataset>-<data id>/<settings>/ (t3d.eval.layout: folders never collide, and a
finished result is reused, refused or, with evaluation.restart=true, moved aside; never replaced). With more than
one evaluation it also writes results/sweep-<dataset>-<members id>/ with sweep.json, sweep.md and sweep.png
(accuracy against tokens per forward, one line per checkpoint, with each method's AUP). The main process locks
every result folder for the run. Under `accelerate launch` decoding is split across processes; grading and
writing happen on the main one.
"""
import gc
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from t3d.common.io import (DataError, atomic_save_figure, atomic_write_json, atomic_write_jsonl, atomic_write_text,
                           check_output_dir, move_aside)
from t3d.decode.rollout import (Partials, data_digest, input_fingerprint, item_error, main_process_locks, make_state,
                                prepare_prompts, rollout, setup, summarize)
from t3d.eval import sandbox
from t3d.eval.aup import aup
from t3d.eval.tracking import log_eval, wandb_enabled
from t3d.eval.grading import NO_ANSWER, NO_CODE, code_tests, grade_items, pass_at_k
from t3d.eval.layout import finished_result, read_json, result_dir, result_settings, sweep_dir
from t3d.eval.settings import EvalJob, Setting, checkpoint_list, sweep_settings  # noqa: F401  (parsers: re-exported)
from t3d.model.checkpoint import check_checkpoint, content_fingerprint, load_tokenizer, resolve_checkpoint
from t3d.tasks.prompting import DATA_TYPES


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
            if with_steps:  # with the token ids and block size, t3d-view draws the decode order of any response
                rec.update(response_ids=item["response_ids"][r], step_map=item["step_map"][r],
                           block_size=item.get("block_size"))
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
    """AUP (t3d.eval.aup) of every method of a sweep with at least two settings; a method is a checkpoint's
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
    return atomic_save_figure(fig, path)


# --------------------------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Run:
    """One (checkpoint, setting) evaluation of a job."""

    label: str
    path: str  # as given
    resolved: str  # the checkpoint directory
    setting: Setting
    run_dir: Path
    settings: dict  # result_settings
    inputs: dict  # weights, tokenizer and data fingerprints


def plan_runs(job: EvalJob, data_file, all_items, items):
    """Every Run of the job, checkpoint by checkpoint, with its result folder and recorded settings."""
    runs, data = [], data_digest(items)
    for label, path in job.checkpoints:
        resolved = resolve_checkpoint(path)
        config, tokenizer = check_checkpoint(resolved), load_tokenizer(resolved)
        content = content_fingerprint(resolved)
        checked = set()  # what decides whether prompts fit: one check per (max_token, think prefix), not per setting
        for setting in job.settings:
            rollout_settings = job.rollout_for(setting)
            fit = (rollout_settings.decode.max_new_tokens, rollout_settings.start_with_think)
            if fit not in checked:  # a setting that cannot decode any item is refused before anything is written
                prepare_prompts(items, tokenizer, rollout_settings, job.dataset.data_type,
                                config.get("max_position_embeddings"))
                checked.add(fit)
            runs.append(Run(label, path, resolved, setting,
                            result_dir(job.results_root, label, content, job.dataset, all_items, rollout_settings),
                            result_settings(rollout_settings, job.dataset, job.execute, data_file, resolved),
                            {"weights": content["weights"], "tokenizer": content["tokenizer"], "data": data}))
    return runs


def evaluate(job: EvalJob, run: Run, state, model, tokenizer, stop_ids, items, *, load_seconds=0.0, data_file=None):
    """Decode, grade and write one (checkpoint, setting) evaluation. Returns its metrics (None off-main)."""
    data_type, settings = job.dataset.data_type, job.rollout_for(run.setting)
    k = settings.num_responses
    inputs = input_fingerprint(run.inputs, tokenizer, items, settings, data_type=data_type, stop_ids=stop_ids,
                               device=state.device)
    started = time.perf_counter()
    results, stats = rollout(model, tokenizer, items, settings, data_type=data_type, stop_ids=stop_ids, state=state,
                             partials=Partials(run.run_dir / "decode", inputs, job.restart, run.resolved, data_file))
    decode_seconds = time.perf_counter() - started
    if results is None:
        return None
    graded_at = time.perf_counter()
    decoded = [item for item in results if "error" not in item]
    marks = iter(grade_items(decoded, data_type, timeout=job.execute.test_time_limit, memory_mb=job.execute.memory_mb,
                             workers=job.execute.num_chunk or None))
    correct = [[False] * k if "error" in item else next(marks) for item in results]
    grade_seconds = time.perf_counter() - graded_at
    for item in results:
        if "error" in item:
            print(f"{job.dataset.spec}: {item['error']} (counted wrong)", file=sys.stderr)

    d, setting = settings.decode, run.setting
    metrics = {
        "checkpoint": run.label, "checkpoint_path": run.resolved, "dataset": job.dataset.name,
        "data_type": data_type, "setting": setting.label, "sweep_kind": setting.kind,
        "block_size": d.block_size, "denoising_steps_per_block": setting.steps,
        "remasking_strategy": setting.strategy, "dynamic_threshold": setting.threshold,
        "temperature": d.temperature, "max_token": d.max_new_tokens,
        "num_response_per_task": k, "seed": settings.seed, "max_items": job.dataset.max_items,
    }
    metrics.update(compute_metrics(results, correct, {**stats, "seconds": decode_seconds}, k, data_type))
    metrics["grade_seconds"] = grade_seconds
    metrics["wall_seconds"] = decode_seconds + grade_seconds
    metrics["load_seconds"] = load_seconds  # once per checkpoint, shared by its settings
    metrics["model_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    metrics["attn_implementation"] = model.config._attn_implementation  # what auto chose on this device
    metrics["run_dir"] = str(run.run_dir)
    metrics["settings"] = run.settings
    metrics["inputs"] = run.inputs
    if data_type == "code":  # how the generated code was confined (README: code sandbox)
        metrics["sandbox"] = sandbox.isolation()

    atomic_write_jsonl(run.run_dir / "items.jsonl", item_records(results, correct, data_type, job.keep_step_maps))
    atomic_write_text(run.run_dir / "metrics.md", metrics_markdown(metrics))
    atomic_write_text(run.run_dir / "config.yaml", job.config_yaml(setting, run.path))
    atomic_write_json(run.run_dir / "metrics.json", metrics)  # last: a result is finished once it has metrics.json
    for partial in run.run_dir.glob("decode.partial.rank*.jsonl"):
        partial.unlink()
    print(f"{run.label} {setting.label}: accuracy {metrics['accuracy']:.4f}, tokens/forward "
          f"{metrics['tokens_per_forward']:.3f} -> {run.run_dir}", file=sys.stderr)
    return metrics


def _evaluate_checkpoint(job, runs, finished, state, items, data_file):
    """The rows of one checkpoint's runs: finished ones as they are, the others evaluated with the checkpoint
    loaded once (not at all when every one is finished)."""
    rows, model, load_seconds = [], None, 0.0
    for run in runs:
        if run.run_dir in finished:
            print(f"{run.label} {run.setting.label}: unchanged, finished in {run.run_dir} (evaluation.restart=true "
                  "evaluates it again)", file=sys.stderr)
            rows.append(finished[run.run_dir])
            continue
        if model is None:
            loaded_at = time.perf_counter()
            model, tokenizer, stop_ids = setup(run.resolved, job.rollout_for(run.setting), state)
            load_seconds = time.perf_counter() - loaded_at
        row = evaluate(job, run, state, model, tokenizer, stop_ids, items, load_seconds=load_seconds,
                       data_file=data_file)
        if row is not None:
            rows.append(row)
    if model is not None:
        del model
        gc.collect()
        if state.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def write_sweep(rows, scores, job: EvalJob, directory):
    """sweep.json ({"rows": [...], "aup": [...]}), sweep.md, sweep.png and the config. The same rows already there:
    nothing is written; other rows (a member evaluated again): the old summary is moved aside first."""
    directory = Path(directory)
    summary = {"rows": rows, "aup": scores}
    if (directory / "sweep.json").is_file():
        if read_json(directory / "sweep.json") == json.loads(json.dumps(summary)):
            os.utime(directory / "sweep.json")  # newest: what `scripts/pipeline.py sweep_rows` reads
            print(f"{directory}: unchanged", file=sys.stderr)
            return directory
        print(f"note: moved the earlier summary {directory} to {move_aside(directory)}", file=sys.stderr)
    dataset, block = job.dataset.name, job.rollout.decode.block_size
    atomic_write_json(directory / "sweep.json", summary)
    atomic_write_text(directory / "sweep.md",
                      f"# {dataset}: block size {block}\n\n" + markdown_table(rows) + aup_markdown(scores))
    k = rows[0]["num_response_per_task"]
    title = (f"{dataset}: accuracy vs tokens per forward (block size {block}, T={job.rollout.decode.temperature:g}"
             + (f", k={k})" if k > 1 else ")"))
    plot_sweep(rows, directory / "sweep.png", title, scores)
    atomic_write_text(directory / "config.yaml", job.config_yaml())
    print(f"wrote {directory}/sweep.md, sweep.json, sweep.png", file=sys.stderr)
    return directory


def run_eval_job(cfg):
    """eval.py: every (checkpoint x setting) of the config. Returns the metrics rows (None off-main)."""
    return run_eval(EvalJob.from_config(cfg))


def run_eval(job: EvalJob):
    """Every (checkpoint x setting) of the job; finished results are reused. Returns the rows (None off-main)."""
    check_output_dir(job.results_root, "experiment.output_dir")
    data_file, all_items = job.dataset.load()
    items = job.dataset.first(data_file, all_items)
    validate_items(items, job.dataset.data_type, data_file)
    runs = plan_runs(job, data_file, all_items, items)  # every checkpoint checked before the first decode
    summary_dir = sweep_dir(job.results_root, job.dataset, [run.run_dir for run in runs]) if len(runs) > 1 else None
    state = make_state()
    with main_process_locks([run.run_dir for run in runs] + ([summary_dir] if summary_dir else []), state):
        finished = {}
        for run in runs:  # every finished result checked before the first decode
            old = finished_result(run.run_dir, run.settings, run.inputs, job.restart, state)
            if old is not None:
                finished[run.run_dir] = old
        state.wait_for_everyone()  # results moved aside (restart) before anyone writes
        threads = torch.get_num_threads()
        if not torch.cuda.is_available() and job.num_threads > 0:
            torch.set_num_threads(job.num_threads)
        try:
            rows = []
            for label, _ in job.checkpoints:
                mine = [run for run in runs if run.label == label]
                rows += _evaluate_checkpoint(job, mine, finished, state, items, data_file)
        finally:
            torch.set_num_threads(threads)  # process-wide: leave it as found (tests, notebooks)
        if not state.is_main_process:
            return None
        scores = aup_rows(rows)
        if summary_dir is not None:
            write_sweep(rows, scores, job, summary_dir)
        if wandb_enabled():
            log_eval(rows, scores, job.results_root.parent.name, job.results_root.parent,
                     summary_dir / "sweep.png" if summary_dir is not None else None)
    print(markdown_table(rows) + aup_markdown(scores), end="")
    return rows

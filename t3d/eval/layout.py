"""Where eval results go, and what a rerun does with a finished one.

    <output_dir>/<project>/results/<checkpoint label>-<weights id>/<dataset name>-<data id>/<settings>/
    <output_dir>/<project>/results/sweep-<dataset name>-<members id>/

The weights id is the start of the checkpoint's weights fingerprint (t3d.model.checkpoint.content_fingerprint),
the data id a digest of the dataset's items, the members id a digest of the sweep's result folders: two
checkpoints with one name (every trainer's `ckpt/optimized`), two files with one stem, or two sweeps of one
dataset never share a folder. A finished result is reused when its weights, tokenizer, items and every setting
that changes its numbers are the same (where the files were read from does not matter); otherwise the rerun is
refused, unless evaluation.restart=true, which moves the old folder aside to `<folder>.previous-<UTC time>`.
"""
import hashlib
import json
import sys
from pathlib import Path

from t3d.common.config import ConfigError
from t3d.common.io import move_aside
from t3d.decode.rollout import data_digest, digest
from t3d.decode.settings import DatasetSettings, RolloutSettings
from t3d.eval.settings import DYNAMIC, ExecuteSettings

ID_LENGTH = 8  # hex digits of a folder's content id: readable, and a collision needs ~65,000 versions of one name


def run_name(rollout: RolloutSettings, dataset: DatasetSettings):
    """Readable directory name of an evaluation's settings, e.g. B4-S1-low_confidence_static-T0.1-len64-k1-seed0
    (top-k, top-p, max_items, random init, think, dtype and stop strings appear only when set)."""
    d = rollout.decode
    parts = [f"B{d.block_size}", f"S{d.steps_per_block}", d.strategy]
    if d.strategy == DYNAMIC:
        parts.append(f"tau{d.dynamic_threshold:g}")
    parts.append(f"T{d.temperature:g}")
    if d.top_k:
        parts.append(f"topk{d.top_k}")
    if d.top_p < 1:
        parts.append(f"topp{d.top_p:g}")
    parts += [f"len{d.max_new_tokens}", f"k{rollout.num_responses}", f"seed{rollout.seed}"]
    if dataset.max_items:
        parts.append(f"first{dataset.max_items}")
    if d.random_init_ratio:
        parts.append(f"rinit{d.random_init_ratio:g}")
    if rollout.start_with_think:
        parts.append("think")
    if rollout.dtype != "auto":
        parts.append(rollout.dtype)
    if rollout.stop_strings:
        parts.append("stop" + hashlib.sha256("\0".join(rollout.stop_strings).encode()).hexdigest()[:6])
    return "-".join(parts)


def result_dir(results_root, label, content, dataset: DatasetSettings, all_items, rollout: RolloutSettings):
    """results/<label>-<weights id>/<dataset>-<data id>/<settings>/ of one evaluation."""
    checkpoint = f"{label}-{content['weights'][:ID_LENGTH]}"
    data = f"{dataset.name}-{data_digest(all_items)[:ID_LENGTH]}"
    return Path(results_root) / checkpoint / data / run_name(rollout, dataset)


def sweep_dir(results_root, dataset: DatasetSettings, run_dirs):
    """results/sweep-<dataset>-<id of its member folders, in table order>/."""
    members = [str(Path(d).relative_to(results_root)) for d in run_dirs]
    return Path(results_root) / f"sweep-{dataset.name}-{digest(members, ID_LENGTH)}"


def result_settings(rollout: RolloutSettings, dataset: DatasetSettings, execute: ExecuteSettings, data_file, ckpt_path):
    """Every setting that changes an evaluation's numbers, as {config key: value} (recorded in metrics.json),
    plus where the checkpoint and dataset were read from."""
    d = rollout.decode
    out = {"rollout.num_response_per_task": rollout.num_responses, "rollout.temperature": d.temperature,
           "rollout.max_token": d.max_new_tokens, "rollout.block_size": d.block_size,
           "rollout.denoising_steps_per_block": d.steps_per_block, "rollout.top_p": d.top_p, "rollout.top_k": d.top_k,
           "rollout.remasking_strategy": d.strategy, "rollout.dynamic_threshold": d.dynamic_threshold,
           "rollout.start_with_think": rollout.start_with_think, "rollout.random_init_ratio": d.random_init_ratio,
           "rollout.stop_token_list": list(rollout.stop_strings), "rollout.seed": rollout.seed,
           "rollout.dtype": rollout.dtype, "rollout.attn_implementation": rollout.attn_implementation}
    if d.strategy != DYNAMIC:
        del out["rollout.dynamic_threshold"]  # unused by the static rule
    out.update({
        "evaluation.checkpoint_path": str(ckpt_path), "evaluation.eval_dataset": str(data_file),
        "evaluation.data_type": dataset.data_type, "evaluation.max_items": dataset.max_items,
        "execute.test_time_limit": execute.test_time_limit, "execute.memory_mb": execute.memory_mb,
    })
    options = dataset.options()
    for key in ("split", "subset", "columns", "answer_format"):  # how the items were read
        if options[key] is not None:
            out[f"evaluation.dataset_{key}"] = options[key]
    return json.loads(json.dumps(out))  # as metrics.json holds them


def _deciding(settings):
    """The settings that decide the numbers: not where the checkpoint and items were read from (the folder's ids and
    the recorded inputs say what they are)."""
    return {k: v for k, v in settings.items()
            if k not in ("evaluation.checkpoint_path", "evaluation.eval_dataset")
            and not k.startswith("evaluation.dataset_")}


def read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def finished_result(run_dir, settings, inputs, restart, state):
    """The finished metrics in run_dir if they were made from the same inputs and settings (the rerun reuses
    them), else None (evaluate). A finished result of anything else is refused in one line; with `restart` it is
    moved aside (by the main process) and None is returned."""
    if not (Path(run_dir) / "metrics.json").is_file():
        return None
    if restart:
        if state.is_main_process:
            moved = move_aside(run_dir)
            print(f"note: evaluation.restart=true: moved the finished result {run_dir} to {moved}", file=sys.stderr)
        return None
    old = read_json(Path(run_dir) / "metrics.json") or {}
    old_settings, old_inputs = old.get("settings"), old.get("inputs")
    if not isinstance(old_settings, dict) or not isinstance(old_inputs, dict):
        what = "a result without recorded settings"
    elif _deciding(old_settings) != _deciding(settings):
        new, was = _deciding(settings), _deciding(old_settings)
        keys = [k for k in new if was.get(k) != new[k]] + [k for k in was if k not in new]
        what = "a result of other settings: " + ", ".join(f"{k}={was.get(k)!r} (now {new.get(k)!r})" for k in keys)
    elif old_inputs != inputs:
        keys = [k for k in inputs if old_inputs.get(k) != inputs[k]]
        what = "a result of other inputs: " + ", ".join(f"{k} {old_inputs.get(k)} (now {inputs[k]})" for k in keys)
    else:
        return old
    raise ConfigError(f"{run_dir}/metrics.json holds {what}; choose another experiment.project or output_dir, "
                      "or pass evaluation.restart=true to replace it")

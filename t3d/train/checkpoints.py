"""Run-directory files: model checkpoints (save_pretrained), accelerator states for resume, rotation, and
the decision to resume or start fresh.

Layout of `{output_dir}/{project}/`:
    config.yaml                 resolved training config
    metrics.jsonl               one line per optimizer step: step, epoch, loss, the trainer's parts (T3D:
                                ddo_real, ddo_fake (before alpha), path, mask_ratio; SFT: masked_tokens), lr,
                                grad_norm (before clipping), tokens (prompt + response tokens over all
                                processes), seconds (compute time of the step, saving excluded)
    ckpt/{name}-step{N}/        weights (safetensors) + tokenizer + config.yaml, loadable by t3d.model.checkpoint.load
    ckpt/{name}/                the final model
                                (LoRA runs: adapter_config.json naming the base (see t3d.train.lora) +
                                adapter_model.safetensors + tokenizer + config.yaml, loadable the same way;
                                merged/ = base + adapter when model.lora.save_merged)
    state/step-{N}/             accelerator.save_state: model, optimizer, scheduler, RNG, loop position, plus
                                manifest.json: the run's fingerprint and every file's size and CRC-32
    previous/{UTC time}/        an earlier run's files, moved aside by a fresh start (never deleted)
Every directory is written under a `.tmp-*` name and renamed when complete, so a kill never leaves a
half-written checkpoint behind a real name; the manifest also catches a state damaged afterwards.
"""
import hashlib
import json
import logging
import os
import re
import shutil
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import torch

from t3d.train import lora
from t3d.train.runtime import TrainingError, run_dir, save_dtype
from t3d.common.errors import first_line
from t3d.common.config import flatten, save_config
from t3d.common.io import append_text, atomic_write_json, atomic_write_text
from t3d.model.checkpoint import content_fingerprint
from t3d.model.export import make_standalone

MANIFEST = "manifest.json"
# Config keys that cannot change a trained number (paths, names, logging, saving cadence, how to start);
# every other resolved key is part of a run's fingerprint. Data and initial weights count by content.
NOT_TRAINING = ("wandb.", "experiment.project", "experiment.output_dir", "experiment.start_from_scratch",
                "experiment.num_node", "experiment.save_every_steps", "experiment.checkpoints_total_limit",
                "training.resume_from_checkpoint", "training.gradient_checkpointing_enable", "model.attn_implementation",
                "training.save_dtype",
                "model.pretrained_model", "model.optimized_name", "model.lora.save_merged", "model.lora.base_name",
                "dataset.optimization_data")
RUN_FILES = ("state", "ckpt", "metrics.jsonl", "config.yaml", "wandb_run_id", "wandb")  # what a fresh start moves aside

class LoopState:
    """Where the loop is: saved with the accelerator state so a resume continues at the same micro-batch.
    `layout` (processes, micro-batch, accumulation, records) must match on resume, or the position is wrong."""

    def __init__(self, layout):
        self.layout = list(layout)
        self.global_step, self.epoch, self.batches_done = 0, 0, 0

    def state_dict(self):
        return {"global_step": self.global_step, "epoch": self.epoch, "batches_done": self.batches_done,
                "layout": self.layout}

    def load_state_dict(self, state):
        if list(state["layout"]) != self.layout:
            raise TrainingError(
                f"cannot resume: the state was saved with (processes, batch_size_lm, gradient_accumulation_steps, "
                f"records) = {tuple(state['layout'])}, this run has {tuple(self.layout)}")
        self.global_step, self.epoch, self.batches_done = state["global_step"], state["epoch"], state["batches_done"]


# ------------------------------------------------------------------------------------------ fingerprints
def file_digest(path, algo="sha256"):
    """Hex digest of a file's bytes, read in 16 MiB chunks; algo 'crc32' is the fast integrity check."""
    crc, h = 0, None if algo == "crc32" else hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            if h is None:
                crc = zlib.crc32(chunk, crc)
            else:
                h.update(chunk)
    return f"{crc:08x}" if h is None else h.hexdigest()


def run_fingerprint(cfg, data_path, model_dir, processes):
    """What a resume state must match: the resolved config minus NOT_TRAINING keys, the number of
    processes, the training data's content and the starting model's files."""
    config = {k: v for k, v in flatten(cfg).items() if not any(k == n or k.startswith(n) for n in NOT_TRAINING)}
    if (cfg.model.get("lora") or {}).get("r") is None:  # LoRA off: a state saved before model.lora existed matches
        config = {k: v for k, v in config.items() if not k.startswith("model.lora")}
    return json.loads(json.dumps({"config": config, "processes": int(processes),
                                  "data": file_digest(data_path), "weights": content_fingerprint(model_dir)}))


def fingerprint_changes(saved, current):
    """Human-readable differences between two fingerprints ([] when compatible)."""
    changes = []
    old, new = saved.get("config", {}), current["config"]
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            changes.append(f"{key} {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}")
    if saved.get("processes") != current["processes"]:
        changes.append(f"processes {saved.get('processes')} -> {current['processes']}")
    if saved.get("data") != current["data"]:
        changes.append("the training data's content (dataset.optimization_data)")
    if isinstance(saved.get("weights"), str):  # recorded before the fingerprint covered weights and tokenizer apart
        changes.append("the initial model's fingerprint was recorded by an earlier t3d version (start fresh)")
    elif saved.get("weights") != current["weights"]:
        changes.append("the initial weights or tokenizer (model.pretrained_model)")
    return changes


# ------------------------------------------------------------------------------------------ attention kernel
def check_attn_setting(cfg):
    """model.attn_implementation must name a known kernel (whether it runs here is checked when loading)."""
    from t3d.common.config import ConfigError
    from t3d.model.checkpoint import ATTN_IMPLEMENTATIONS

    value = cfg.model.get("attn_implementation", "auto")
    if value not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"model.attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, got {value!r}")


def record_attn_implementation(cfg, model):
    """Write the kernel actually chosen into the run's config (config.yaml, W&B config), so `auto` is resolved in
    the run's outputs; a rerun resolves it again (the key is not part of the resume fingerprint: every kernel
    computes the same attention)."""
    from omegaconf import OmegaConf, open_dict

    chosen = model.config._attn_implementation
    with open_dict(cfg):
        OmegaConf.update(cfg, "model.attn_implementation", chosen, force_add=True)
    if os.environ.get("RANK", "0") == "0":
        print(f"attention: {chosen}", flush=True)


# ------------------------------------------------------------------------------------------ saving
def _publish(tmp, dest):
    """Rename a finished temp dir onto dest (replacing an older dest)."""
    old = dest.parent / f".old-{dest.name}"
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def clean_temporaries(root):
    """Remove `.tmp-*` / `.old-*` leftovers of a killed run."""
    for sub in ("ckpt", "state"):
        for prefix in (".tmp-", ".old-"):
            for p in (Path(root) / sub).glob(prefix + "*"):
                shutil.rmtree(p, ignore_errors=True)


class _TiedHeadNote(logging.Filter):
    """accelerate logs "Removed shared tensor {'lm_head.weight'}" at every safetensors save of a model with
    tied embeddings: expected (the tie is restored on load), so only that exact note is dropped."""

    def filter(self, record):
        # (a LoRA run's key is base_model.model.lm_head.weight)
        return not re.search(r"Removed shared tensor \{'(base_model\.model\.)?lm_head\.weight'\}", record.getMessage())


@contextmanager
def _writing(dest, tmp, tied):
    """Turn any failure while writing (full disk, permissions, ...) into one line; the temp dir goes."""
    note = _TiedHeadNote()
    log = logging.getLogger("accelerate.utils.other")
    if tied:
        log.addFilter(note)
    try:
        yield
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = f"{err.strerror} ({err.filename or tmp})" if isinstance(err, OSError) and err.strerror else (
            str(err).splitlines()[0] if str(err) else type(err).__name__)
        raise TrainingError(f"could not write {dest}: {reason}; nothing was published under that name, "
                            "earlier checkpoints and states are intact") from None
    finally:
        log.removeFilter(note)


def _tied(accelerator, model):
    return bool(getattr(accelerator.unwrap_model(model).config, "tie_word_embeddings", False))


def save_model(accelerator, model, tokenizer, cfg, dest):
    """save_pretrained (safetensors; a LoRA run: the adapter, see t3d.train.lora.save_adapter) + tokenizer + resolved
    config.yaml, atomically. Called on every rank: get_state_dict gathers ZeRO-3 shards."""
    dest = Path(dest)
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        dtype = save_dtype(cfg)
        state = _cast_state(state, dtype)
        tmp = dest.parent / f".tmp-{dest.name}"
        with _writing(dest, tmp, _tied(accelerator, model)):
            shutil.rmtree(tmp, ignore_errors=True)
            unwrapped = accelerator.unwrap_model(model)
            if lora.is_peft(unwrapped):  # the adapter (+ optionally the merged model, with its own tokenizer)
                base = adapter_base_record(cfg, unwrapped, dest)
                if lora.save_adapter(unwrapped, state, tmp, bool(cfg.model.lora.save_merged), base) is not None:
                    tokenizer.save_pretrained(tmp / "merged")
            else:
                unwrapped.save_pretrained(tmp, state_dict=state, safe_serialization=True)
                _declare_dtype(tmp / "config.json", dtype)  # config.json names the model's dtype, not the weights'
            tokenizer.save_pretrained(tmp)
            save_config(cfg, tmp)
            for directory in (tmp, tmp / "merged"):  # loadable without t3d (trust_remote_code)
                make_standalone(directory)
            _publish(tmp, dest)
    accelerator.wait_for_everyone()


def adapter_base_record(cfg, model, dest):
    """The base a LoRA checkpoint at `dest` records: model.lora.base_name verbatim, else the trained adapter's
    source made relative to `dest` when it lies inside experiment.output_dir (t3d.train.lora.recorded_base)."""
    source = model.peft_config[lora.TRAINED].base_model_name_or_path
    return lora.recorded_base(source, dest, None if lora.base_name(cfg) is not None else run_dir(cfg).parent)


def _cast_state(state, dtype):
    """Floating tensors in `dtype`; tensors that share storage (tied embeddings) still share it, so they are
    saved once."""
    cast, out = {}, {}
    for name, tensor in state.items():
        if not tensor.is_floating_point() or tensor.dtype == dtype:
            out[name] = tensor
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in cast:
            cast[key] = tensor.to(dtype)
        out[name] = cast[key]
    return out


def _declare_dtype(config_file, dtype):
    config = json.loads(config_file.read_text(encoding="utf-8"))
    name = str(dtype).replace("torch.", "")
    for key in ("dtype", "torch_dtype"):  # transformers >= 4.56 writes dtype, older ones torch_dtype
        if key in config:
            config[key] = name
    atomic_write_text(config_file, json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_manifest(directory, fingerprint, step):
    files = {str(p.relative_to(directory)): {"bytes": p.stat().st_size, "crc32": file_digest(p, "crc32")}
             for p in sorted(Path(directory).rglob("*")) if p.is_file() and p.name != MANIFEST}
    atomic_write_json(Path(directory) / MANIFEST, {"step": step, "fingerprint": fingerprint, "files": files})


OBJECTS = "t3d_objects.pt"  # the scheduler, loop position and a full reference's weights: tensors and plain data


def save_state(accelerator, model, dest, fingerprint, step, objects=()):
    """accelerator.save_state into a temp dir on every rank; the main process adds `objects`' state dicts (loaded
    back with torch.load(weights_only=True): no pickled code runs on resume) and the manifest, then renames."""
    dest = Path(dest)
    tmp = dest.parent / f".tmp-{dest.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    with _writing(dest, tmp, _tied(accelerator, model)):
        accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with _writing(dest, tmp, False):
            torch.save([obj.state_dict() for obj in objects], tmp / OBJECTS)
            write_manifest(tmp, fingerprint, step)
            _publish(tmp, dest)
    accelerator.wait_for_everyone()


def load_objects(state_dir, objects):
    """Restore what save_state saved beside accelerate's state, without unpickling code."""
    path = Path(state_dir) / OBJECTS
    if not path.is_file():
        raise TrainingError(f"{state_dir}: no {OBJECTS} (a state written by an earlier t3d version); "
                            "set experiment.start_from_scratch=true")
    try:
        states = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused (a forged file) or a damaged one
        raise TrainingError(f"{path}: cannot load ({first_line(err, limit=160)})") from None
    if len(states) != len(objects):
        raise TrainingError(f"{path}: holds {len(states)} objects, this run saves {len(objects)}")
    for obj, state in zip(objects, states):
        obj.load_state_dict(state)


def _numbered(directory, pattern):
    found = []
    for p in Path(directory).glob("*"):
        m = re.fullmatch(pattern, p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def prune(directory, pattern, limit):
    """Keep the newest `limit` directories whose name matches `pattern` (one group = step number)."""
    if not limit or limit <= 0:
        return
    for _, p in _numbered(directory, pattern)[:-limit]:
        shutil.rmtree(p, ignore_errors=True)


# ------------------------------------------------------------------------------------------ resume or start
def state_problem(state):
    """Why a state directory cannot be loaded (missing or damaged file), or None; checks the manifest."""
    try:
        manifest = json.loads((state / MANIFEST).read_text(encoding="utf-8"))
        files, _ = dict(manifest["files"]), dict(manifest["fingerprint"])
    except FileNotFoundError:
        return f"{state / MANIFEST} is missing (an unfinished state, or one saved by an older version)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{state / MANIFEST} is corrupt"
    for name, meta in files.items():
        path = state / name
        if not isinstance(meta, dict) or not {"bytes", "crc32"} <= set(meta):
            return f"{state / MANIFEST} is corrupt"
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != meta["bytes"]:
            return f"{path} is corrupt ({path.stat().st_size} bytes, {meta['bytes']} saved)"
        if file_digest(path, "crc32") != meta["crc32"]:
            return f"{path} is corrupt (checksum mismatch)"
    return None


def _saved_model_dir(path):
    return (path / "config.json").is_file() and not (path / MANIFEST).is_file()


def _explicit_state(spec):
    path = Path(str(spec)).expanduser()
    if not path.is_dir():
        raise TrainingError(f"training.resume_from_checkpoint: no such state directory {path}")
    if _saved_model_dir(path):
        raise TrainingError(
            f"training.resume_from_checkpoint={path} is a saved model, not a training state: pass "
            f"model.pretrained_model={path} to start from its weights, or a <run dir>/state/step-N directory to resume")
    problem = state_problem(path)
    if problem:
        raise TrainingError(f"training.resume_from_checkpoint: cannot resume: {problem}")
    return path


def _latest_usable_state(root, log):
    """Newest state/step-N whose files match its manifest; a damaged one is named and skipped."""
    damaged = []
    for _, state in reversed(_numbered(Path(root) / "state", r"step-(\d+)")):
        problem = state_problem(state)
        if problem is None:
            if damaged:
                log(f"WARNING: resuming from the older state {state.name} instead")
            return state
        damaged.append(problem)
        log(f"WARNING: resume state {state} is unusable: {problem}")
    if damaged:
        raise TrainingError(f"no usable resume state in {Path(root) / 'state'}: {damaged[0]}; set "
                            "experiment.start_from_scratch=true to start a fresh run (the damaged states are moved aside)")
    return None


def move_aside(root, log):
    """Move an earlier run's files to previous/<UTC time>/ (nothing is deleted); returns that dir or None."""
    root = Path(root)
    found = [name for name in RUN_FILES if (root / name).exists()]
    if not found:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest, n = root / "previous" / stamp, 1
    while dest.exists():
        dest, n = root / "previous" / f"{stamp}-{n}", n + 1
    dest.mkdir(parents=True)
    for name in found:
        os.replace(root / name, dest / name)
    log(f"fresh start: moved the earlier run's {', '.join(found)} from {root} to {dest} (nothing deleted; "
        "remove it yourself when no longer needed)")
    return dest


def choose_start(cfg, root, fingerprint, log):
    """Main process: the state to resume from (None = fresh start, earlier files moved aside).

    Default (experiment.start_from_scratch=false): the newest intact state in the run dir, which must
    match this run's fingerprint; none -> fresh. training.resume_from_checkpoint names a state instead."""
    clean_temporaries(root)
    spec = cfg.training.resume_from_checkpoint
    if cfg.experiment.start_from_scratch:  # (with resume_from_checkpoint set: refused by check_common)
        state = None
    elif spec not in (None, "", "latest"):
        state = _explicit_state(spec)
    else:
        state = _latest_usable_state(root, log)
    if state is None:
        move_aside(root, log)
        return None
    saved = json.loads((state / MANIFEST).read_text(encoding="utf-8"))["fingerprint"]
    changes = fingerprint_changes(saved, fingerprint)
    if changes:
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise TrainingError(f"cannot resume from {state}: it belongs to a different run ({shown}); set "
                            "experiment.start_from_scratch=true to start fresh (the earlier run is moved to "
                            f"{Path(root) / 'previous'}/) or use another experiment.project")
    read_metrics(Path(root) / "metrics.jsonl", lambda _: None)  # a damaged log stops the run before any write
    return state


# ------------------------------------------------------------------------------------------ metrics
def read_metrics(path, log=print):
    """metrics.jsonl -> [(step, line)]. A torn last line (a kill during the append) is dropped with a note;
    a bad line elsewhere is a TrainingError naming the file and line."""
    path, rows = Path(path), []
    if not path.is_file():
        return rows
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append((int(json.loads(line)["step"]), line))
        except (ValueError, KeyError, TypeError):
            if n != len(lines):
                raise TrainingError(f"{path}: line {n} is not a metrics record; fix or remove it") from None
            log(f"note: {path}: dropped a torn last line (line {n}, a crash during the write)")
    return rows


class MetricsLog:
    """metrics.jsonl: one JSON line per optimizer step; a resume keeps the lines up to its step."""

    def __init__(self, path, enabled, resume_step=None, log=print):
        self.path, self.enabled = Path(path), enabled
        if not enabled:
            return
        rows = read_metrics(self.path, log) if resume_step is not None else []
        if resume_step and not rows:
            log(f"note: {self.path} is missing or empty: the metrics of steps 1-{resume_step} are lost; "
                f"this run's file starts at step {resume_step + 1}")
        elif resume_step and rows[-1][0] < resume_step:
            log(f"note: {self.path} ends at step {rows[-1][0]}: the metrics of steps {rows[-1][0] + 1}-{resume_step} "
                "are lost")
        atomic_write_text(self.path, "".join(line + "\n" for step, line in rows if step <= resume_step))

    def write(self, record):
        if self.enabled:
            append_text(self.path, json.dumps(record) + "\n")

"""Run-directory files: model checkpoints (save_pretrained), accelerator states for resume, rotation.

Layout of `{output_dir}/{project}/`:
    config.yaml                 resolved training config
    metrics.jsonl               one line per optimizer step: step, epoch, loss, the trainer's parts (T3D:
                                ddo_real, ddo_fake (before alpha), path, mask_ratio; SFT: masked_tokens), lr,
                                grad_norm (before clipping), tokens (prompt + response tokens over all
                                processes), seconds (compute time of the step, saving excluded)
    ckpt/{name}-step{N}/        weights (safetensors) + tokenizer + config.yaml, loadable by utils.checkpoint.load
    ckpt/{name}/                the final model
    state/step-{N}/             accelerator.save_state: model, optimizer, scheduler, RNG, loop position
Every directory is written under a `.tmp-*` name and renamed when complete, so a kill never leaves a
half-written checkpoint behind a real name.
"""
import json
import os
import re
import shutil
from pathlib import Path

from train.runtime import TrainingError
from utils.config import save_config
from utils.io import atomic_write_text


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


def save_model(accelerator, model, tokenizer, cfg, dest):
    """save_pretrained (safetensors) + tokenizer + resolved config.yaml, atomically. Called on every rank:
    get_state_dict gathers ZeRO-3 shards."""
    dest = Path(dest)
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        tmp = dest.parent / f".tmp-{dest.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        save_config(cfg, tmp)
        _publish(tmp, dest)
    accelerator.wait_for_everyone()


def save_state(accelerator, dest):
    """accelerator.save_state into a temp dir on every rank, renamed by the main process."""
    dest = Path(dest)
    tmp = dest.parent / f".tmp-{dest.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _publish(tmp, dest)
    accelerator.wait_for_everyone()


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


def find_state(root, spec):
    """`training.resume_from_checkpoint`: null -> None, 'latest' -> newest state/step-N (None if none), or a path."""
    if spec in (None, "", False):
        return None
    if str(spec) == "latest":
        found = _numbered(Path(root) / "state", r"step-(\d+)")
        return found[-1][1] if found else None
    path = Path(str(spec)).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"training.resume_from_checkpoint: no such state directory {path}")
    return path


class MetricsLog:
    """metrics.jsonl: one JSON line per optimizer step; a resume drops lines after its step."""

    def __init__(self, path, enabled, resume_step=None):
        self.path, self.enabled = Path(path), enabled
        if not enabled:
            return
        lines = []
        if resume_step is not None and self.path.is_file():
            lines = [ln for ln in self.path.read_text().splitlines()
                     if ln.strip() and json.loads(ln)["step"] <= resume_step]
        atomic_write_text(self.path, "".join(ln + "\n" for ln in lines))

    def write(self, record):
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

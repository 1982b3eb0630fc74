"""The training loop shared by the T3D and SFT trainers.

`fit` owns batching, the optimizer and schedule, gradient accumulation, clipping, logging, checkpoints
and resume; the trainer passes `micro_step(model, batch, epoch) -> (loss, parts)`, which computes one
micro-batch's loss (and scalar parts to log), and an optional `on_epoch_end(epoch)` hook.
"""
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from t3d.train import checkpoints as ck
from t3d.train.data import Collate, EpochShuffle, ExampleDataset
from t3d.train.optim import learning_rate, make_optimizer, make_scheduler
from t3d.train.runtime import TrainingError, start_tracker
from t3d.common.errors import error_line
from t3d.common.config import save_config
from t3d.common.io import OutputLock, OutputLocked

SUMMED = ("tokens",)  # logged as totals over the step; every other part is a mean over micro-batches


class StepStats:
    """Sums of the logged parts over one optimizer step, reduced over processes when the step ends."""

    def __init__(self):
        self.sums, self.n = {}, 0

    def add(self, parts):
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.n += 1

    def reduce(self, accelerator):
        keys = sorted(self.sums)
        values = torch.stack([torch.as_tensor(self.sums[k], device=accelerator.device) for k in keys] +
                             [torch.tensor(float(self.n), device=accelerator.device)])
        values = accelerator.reduce(values, "sum").tolist()
        n = values[-1]
        self.sums, self.n = {}, 0
        return {k: (v if k in SUMMED else v / n) for k, v in zip(keys, values)}


def stop_if_not_finite(accelerator, loss, step):
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=accelerator.device)
    if accelerator.reduce(bad, "sum").item() > 0:  # every rank stops together
        raise TrainingError(f"non-finite loss at optimizer step {step}; stopped without saving this step")


@dataclass
class Run:
    root: Path
    state: Path = None  # the state to resume from; None = fresh start
    fingerprint: dict = None  # main process only: written into every resume state's manifest
    lock: object = None  # main process only: the run directory's OutputLock, released when fit ends


def open_run(cfg, accelerator, root, data_path, model_dir):
    """Before anything is written: resume or start fresh (decided and announced by the main process, see
    checkpoints.choose_start), then the resolved config and the tracker."""
    from accelerate.utils import broadcast_object_list

    fingerprint, decision, lock = None, ["fresh", None], None
    if accelerator.is_main_process:
        try:
            lock = OutputLock(root).acquire()  # one run per run directory, for its whole life
            fingerprint = ck.run_fingerprint(cfg, data_path, model_dir, accelerator.num_processes)
            state = ck.choose_start(cfg, root, fingerprint, accelerator.print)
            decision = ["resume", str(state)] if state else ["fresh", None]
        except (TrainingError, OutputLocked, OSError) as err:  # every rank stops, with the main process's line
            decision = ["error", error_line(err)]
            if lock is not None and not isinstance(err, OutputLocked):
                lock.release()
    decision = broadcast_object_list(decision)
    if decision[0] == "error":
        raise TrainingError(decision[1])
    if accelerator.is_main_process:
        save_config(cfg, root)
    start_tracker(accelerator, cfg, root, resuming=decision[0] == "resume")
    return Run(Path(root), Path(decision[1]) if decision[1] else None, fingerprint, lock)


def _prepare(cfg, accelerator, model, tokenizer, examples, extra_state):
    """DataLoader (per-epoch shuffle, per-batch padding), AdamW, accelerate.prepare, the schedule, and the
    objects saved with every resume state."""
    tr = cfg.training
    accum = accelerator.gradient_accumulation_steps
    sampler = EpochShuffle(len(examples), tr.seed)
    loader = DataLoader(ExampleDataset(examples), batch_size=int(tr.batch_size_lm), sampler=sampler,
                        collate_fn=Collate(tokenizer.pad_token_id))
    total_batch = int(tr.batch_size_lm) * accelerator.num_processes * accum
    raw_optimizer = make_optimizer(model, cfg, learning_rate(cfg, total_batch))
    model, optimizer, loader = accelerator.prepare(model, raw_optimizer, loader)
    total_steps = math.ceil(len(loader) / accum) * int(tr.num_train_epochs)
    # stepped by the loop on the raw optimizer's param groups (accelerate would step it once per process)
    scheduler = make_scheduler(raw_optimizer, cfg, total_steps)
    loop = ck.LoopState((accelerator.num_processes, int(tr.batch_size_lm), accum, len(examples)))
    saved_objects = (scheduler, loop, *extra_state)  # saved beside accelerate's state, loaded without pickle
    return model, optimizer, loader, sampler, scheduler, loop, total_steps, saved_objects


def _resume_or_start(accelerator, run, loop, epochs, saved_objects):
    if run.state is None:
        accelerator.print(f"fresh start in {run.root}")
        return ck.MetricsLog(run.root / "metrics.jsonl", accelerator.is_main_process, log=accelerator.print)
    accelerator.load_state(str(run.state))
    ck.load_objects(run.state, saved_objects)
    accelerator.print(f"resuming from {run.state}: step {loop.global_step}, epoch {loop.epoch + 1} of {epochs} "
                      "(experiment.start_from_scratch=true starts over instead)")
    return ck.MetricsLog(run.root / "metrics.jsonl", accelerator.is_main_process, loop.global_step, log=accelerator.print)


def fit(cfg, accelerator, run, model, tokenizer, examples, micro_step, *, extra_state=(), on_epoch_end=None):
    """Train from `run` (open_run); returns the model. The final model goes to <run dir>/ckpt/<name>. The run
    directory's lock is released when training ends, however it ends."""
    try:
        return _fit(cfg, accelerator, run, model, tokenizer, examples, micro_step, extra_state, on_epoch_end)
    finally:
        if run.lock is not None:
            run.lock.release()


def _fit(cfg, accelerator, run, model, tokenizer, examples, micro_step, extra_state, on_epoch_end):
    from tqdm.auto import tqdm

    exp, name, epochs = cfg.experiment, str(cfg.model.optimized_name), int(cfg.training.num_train_epochs)
    root = run.root
    model, optimizer, loader, sampler, scheduler, loop, total_steps, saved_objects = _prepare(
        cfg, accelerator, model, tokenizer, examples, extra_state)
    metrics = _resume_or_start(accelerator, run, loop, epochs, saved_objects)
    accum, n_batches = accelerator.gradient_accumulation_steps, len(loader)
    clip = float(exp.max_grad_norm) if exp.gradient_clipping else math.inf

    def checkpoint():
        step = loop.global_step
        ck.save_model(accelerator, model, tokenizer, cfg, root / "ckpt" / f"{name}-step{step}")
        ck.save_state(accelerator, model, root / "state" / f"step-{step}", run.fingerprint, step, saved_objects)
        if accelerator.is_main_process:
            ck.prune(root / "ckpt", rf"{name}-step(\d+)", exp.checkpoints_total_limit)
            ck.prune(root / "state", r"step-(\d+)", exp.checkpoints_total_limit)

    stats, tick = StepStats(), time.time()
    with tqdm(total=total_steps, initial=loop.global_step, disable=not accelerator.is_main_process, desc=name) as bar:
        for epoch in range(loop.epoch, epochs):
            skip = loop.batches_done if epoch == loop.epoch else 0
            batches = accelerator.skip_first_batches(loader, skip) if skip else loader
            batches.set_epoch(epoch)  # new order (and, in micro_step, new masks) every epoch; a resumed epoch too
            # accelerate's set_epoch does not reach the sampler through a multi-process loader's skip wrapper
            # (SkipBatchSampler over BatchSamplerShard): a resume in epoch >= 2 would replay epoch 1's order
            sampler.set_epoch(epoch)
            model.train()
            for i, batch in enumerate(batches, start=skip):
                window = min(accum, n_batches - (i // accum) * accum)  # micro-batches in this optimizer step
                with accelerator.accumulate(model):
                    loss, parts = micro_step(model, batch, epoch)
                    stop_if_not_finite(accelerator, loss, loop.global_step + 1)
                    # accelerate divides by accum: rescale so a short last window still averages its micro-batches
                    accelerator.backward(loss * (accum / window))
                    grad_norm = None
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip)
                    optimizer.step()
                    optimizer.zero_grad()
                stats.add({**parts, "tokens": (batch["prompt_len"].sum() + batch["response_len"].sum()).float()})
                if not accelerator.sync_gradients:
                    continue
                lr = scheduler.get_last_lr()[0]
                scheduler.step()
                loop.global_step, loop.epoch, loop.batches_done = loop.global_step + 1, epoch, i + 1
                record = {"step": loop.global_step, "epoch": epoch + 1, **stats.reduce(accelerator), "lr": lr,
                          "grad_norm": None if grad_norm is None else float(grad_norm),
                          "seconds": round(time.time() - tick, 4)}
                metrics.write(record)
                accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=loop.global_step)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", epoch=epoch + 1)
                if exp.save_every_steps and loop.global_step % int(exp.save_every_steps) == 0:
                    checkpoint()
                tick = time.time()  # "seconds" is compute time: saving is not counted
            loop.epoch, loop.batches_done = epoch + 1, 0
            if on_epoch_end is not None and on_epoch_end(epoch, model):
                accelerator.log({"train/round_end_epoch": epoch + 1}, step=loop.global_step)
                checkpoint()  # a round boundary: a resume must see the refreshed reference
                tick = time.time()
    ck.save_model(accelerator, model, tokenizer, cfg, root / "ckpt" / name)
    accelerator.print(f"saved {root / 'ckpt' / name}")
    accelerator.end_training()
    return model

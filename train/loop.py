"""The training loop shared by the T3D and SFT trainers.

`fit` owns batching, the optimizer and schedule, gradient accumulation, clipping, logging, checkpoints
and resume; the trainer passes `micro_step(model, batch, epoch) -> (loss, parts)`, which computes one
micro-batch's loss (and scalar parts to log), and an optional `on_epoch_end(epoch)` hook.
"""
import math
import shutil
import time

import torch
from torch.utils.data import DataLoader

from train import checkpoints as ck
from train.data import Collate, EpochShuffle, ExampleDataset
from train.optim import learning_rate, make_optimizer, make_scheduler
from train.runtime import TrainingError

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


def _fresh_start(accelerator, root, name):
    """A new run in an existing run dir drops the earlier run's resume states and step checkpoints."""
    if accelerator.is_main_process:
        stale = [root / "state"] + list((root / "ckpt").glob(f"{name}-step*"))
        stale = [p for p in stale if p.exists()]
        if stale:
            accelerator.print(f"fresh start: removing {len(stale)} state/checkpoint dirs of an earlier run in {root}")
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()


def _prepare(cfg, accelerator, model, tokenizer, examples, extra_state):
    """DataLoader (per-epoch shuffle, per-batch padding), AdamW, accelerate.prepare, the schedule, and the
    objects saved with every resume state."""
    tr = cfg.training
    accum = accelerator.gradient_accumulation_steps
    loader = DataLoader(ExampleDataset(examples), batch_size=int(tr.batch_size_lm),
                        sampler=EpochShuffle(len(examples), tr.seed), collate_fn=Collate(tokenizer.pad_token_id))
    total_batch = int(tr.batch_size_lm) * accelerator.num_processes * accum
    raw_optimizer = make_optimizer(model, cfg, learning_rate(cfg, total_batch))
    model, optimizer, loader = accelerator.prepare(model, raw_optimizer, loader)
    total_steps = math.ceil(len(loader) / accum) * int(tr.num_train_epochs)
    # stepped by the loop on the raw optimizer's param groups (accelerate would step it once per process)
    scheduler = make_scheduler(raw_optimizer, cfg, total_steps)
    loop = ck.LoopState((accelerator.num_processes, int(tr.batch_size_lm), accum, len(examples)))
    accelerator.register_for_checkpointing(scheduler, loop, *extra_state)
    return model, optimizer, loader, scheduler, loop, total_steps


def _resume_or_start(cfg, accelerator, root, loop):
    if accelerator.is_main_process:
        ck.clean_temporaries(root)
    accelerator.wait_for_everyone()
    spec = cfg.training.resume_from_checkpoint or (None if cfg.experiment.start_from_scratch else "latest")
    state = ck.find_state(root, spec)
    if state is not None:
        accelerator.load_state(str(state))
        accelerator.print(f"resumed from {state}: step {loop.global_step}, epoch {loop.epoch + 1}")
    else:
        _fresh_start(accelerator, root, str(cfg.model.optimized_name))
    return ck.MetricsLog(root / "metrics.jsonl", accelerator.is_main_process, loop.global_step if state else None)


def fit(cfg, accelerator, root, model, tokenizer, examples, micro_step, *, extra_state=(), on_epoch_end=None):
    from tqdm.auto import tqdm

    exp, name, epochs = cfg.experiment, str(cfg.model.optimized_name), int(cfg.training.num_train_epochs)
    model, optimizer, loader, scheduler, loop, total_steps = _prepare(
        cfg, accelerator, model, tokenizer, examples, extra_state)
    metrics = _resume_or_start(cfg, accelerator, root, loop)
    accum, n_batches = accelerator.gradient_accumulation_steps, len(loader)
    clip = float(exp.max_grad_norm) if exp.gradient_clipping else math.inf

    def checkpoint():
        step = loop.global_step
        ck.save_model(accelerator, model, tokenizer, cfg, root / "ckpt" / f"{name}-step{step}")
        ck.save_state(accelerator, root / "state" / f"step-{step}")
        if accelerator.is_main_process:
            ck.prune(root / "ckpt", rf"{name}-step(\d+)", exp.checkpoints_total_limit)
            ck.prune(root / "state", r"step-(\d+)", exp.checkpoints_total_limit)

    stats, tick = StepStats(), time.time()
    with tqdm(total=total_steps, initial=loop.global_step, disable=not accelerator.is_main_process, desc=name) as bar:
        for epoch in range(loop.epoch, epochs):
            skip = loop.batches_done if epoch == loop.epoch else 0
            batches = accelerator.skip_first_batches(loader, skip) if skip else loader
            batches.set_epoch(epoch)  # new order (and, in micro_step, new masks) every epoch; a resumed epoch too
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
                accelerator.log(record, step=loop.global_step)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", epoch=epoch + 1)
                if exp.save_every_steps and loop.global_step % int(exp.save_every_steps) == 0:
                    checkpoint()
                tick = time.time()  # "seconds" is compute time: saving is not counted
            loop.epoch, loop.batches_done = epoch + 1, 0
            if on_epoch_end is not None and on_epoch_end(epoch, model):
                checkpoint()  # a round boundary: a resume must see the refreshed reference
                tick = time.time()
    ck.save_model(accelerator, model, tokenizer, cfg, root / "ckpt" / name)
    accelerator.print(f"saved {root / 'ckpt' / name}")
    accelerator.end_training()
    return model

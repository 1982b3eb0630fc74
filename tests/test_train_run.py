"""End-to-end trainer runs through the real entry points (subprocesses, as users launch them)."""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_train_data import fabricate_records

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
RUN = "ddo_sdar_full_self"

# fallbacks, used only if accelerate_configs/ lacks the file
ACCEL = {
    "cpu_1_process": "distributed_type: 'NO'\nnum_processes: 1\nmixed_precision: 'no'\nuse_cpu: true\n",
    "cpu_2_processes_ddp": "distributed_type: MULTI_GPU\nnum_processes: 2\nmixed_precision: 'no'\nuse_cpu: true\n"
                           "num_machines: 1\nrdzv_backend: static\nsame_network: true\n",
    "cpu_2_processes_deepspeed_zero1": "distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 1\n"
                                       "  gradient_clipping: 1.0\n  offload_optimizer_device: none\nnum_processes: 2\n"
                                       "mixed_precision: 'no'\nuse_cpu: true\nnum_machines: 1\nrdzv_backend: static\n",
    "cpu_2_processes_deepspeed_zero3": "distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 3\n"
                                       "  zero3_init_flag: false\n  offload_optimizer_device: none\n"
                                       "  offload_param_device: none\nnum_processes: 2\nmixed_precision: 'no'\n"
                                       "use_cpu: true\nnum_machines: 1\nrdzv_backend: static\n",
}


def accel_config(name, tmp_path):
    path = REPO / "accelerate_configs" / f"{name}.yaml"
    if not path.is_file():
        path = tmp_path / f"{name}.yaml"
        path.write_text(ACCEL[name])
    return str(path)


def free_port():
    with socket.socket() as sock:  # a fixed rendezvous port collides with any other distributed job on the host
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(script, args, accelerate=None, tmp_path=None, timeout=300):
    # A multi-process launch gets one retry with a fresh port: on a loaded 2-core machine the
    # rendezvous can fail before training starts. Any real failure fails twice and is shown in full.
    for attempt in range(2 if accelerate else 1):
        head = [sys.executable]
        if accelerate:
            head += ["-m", "accelerate.commands.launch", "--config_file", accel_config(accelerate, tmp_path),
                     "--main_process_port", str(free_port())]
        cmd = head + [f"train/{script}", *args]
        out = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
        if out.returncode == 0:
            return out
        print(f"attempt {attempt + 1} failed:\n{out.stderr[-4000:]}", file=sys.stderr)
    raise AssertionError(out.stderr[-4000:])


def t3d_args(data, out, *extra, model=None):
    args = ["config=configs/ddo_sdar_full_self.yaml", f"dataset.optimization_data={data}",
            f"experiment.output_dir={out}", *extra]
    return args + ([f"model.pretrained_model={model}"] if model else [])


def metrics(out, run=RUN):
    return [json.loads(line) for line in (Path(out) / run / "metrics.jsonl").read_text().splitlines()]


def weights(out, run=RUN, name="optimized"):
    return load_file(str(Path(out) / run / "ckpt" / name / "model.safetensors"))


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def relative_difference(a, b, base):
    """||a - b|| / ||a - base|| over all weights: how far two runs' updates from `base` differ, relative to the
    update itself."""
    num = sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a)
    den = sum(((a[k].double() - base[k].double()) ** 2).sum() for k in a)
    return (num / den).sqrt().item()


# Two runs that differ only in float32 summation order (all-reduce across processes vs accumulation in one):
# every gradient differs by a relative O(n * 2^-24) for sums of n terms (n ~ 2e3 tokens here: ~1e-4). Adam
# divides each update by its own running scale, so a weight whose gradient is near zero can move differently
# by up to lr per step; an elementwise bound is therefore lr * steps (no test at all), while the update as a
# whole moves by ~1e-4 of its size. A real fault (a dropped or double-counted micro-batch, a wrong loss scale)
# changes the update by >= 1e-1 of its size. Losses are compared to the same 1e-4 relative.
ORDER_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def tokenizer():
    from t3d.model.checkpoint import load_tokenizer

    return load_tokenizer(str(REPO / "models" / "sdar-tiny"))


def records_file(tokenizer, tmp_path, n):
    path = tmp_path / f"rollouts{n}.json"
    path.write_text(json.dumps(fabricate_records(tokenizer, n)))
    return path


@pytest.mark.slow
def test_seed_launch_trains_the_embedded_default(tokenizer, tmp_path):
    from t3d.model.checkpoint import load

    data, out = records_file(tokenizer, tmp_path, 40), tmp_path / "exp"  # 5 micro-batches: a short last window
    start = time.time()
    launch("self_ddo_sdar_full.py", t3d_args(data, out, "experiment.save_every_steps=2"), "cpu_1_process", tmp_path)
    elapsed = time.time() - start
    assert elapsed < 120
    run = out / RUN
    rows = metrics(out)
    steps_per_epoch = math.ceil(math.ceil(40 / 8) / 2)
    assert [r["step"] for r in rows] == list(range(1, 2 * steps_per_epoch + 1))
    assert set(rows[0]) >= {"step", "epoch", "loss", "ddo_real", "ddo_fake", "path", "lr", "grad_norm", "tokens",
                            "seconds"}
    assert all(math.isfinite(r["loss"]) for r in rows)
    # target == reference at the start and again right after the round-1 refresh (multi_round, 1 epoch per round)
    first_of_epoch2 = rows[steps_per_epoch]
    assert rows[0]["ddo_real"] == pytest.approx(math.log(2))
    assert first_of_epoch2["ddo_real"] == pytest.approx(math.log(2))
    assert rows[steps_per_epoch - 1]["ddo_real"] != pytest.approx(math.log(2))
    # checkpoints: limit 2 kept, final model loadable as eval.py loads it, resolved config beside it
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["optimized", "optimized-step4", "optimized-step6"]
    assert sorted(p.name for p in (run / "state").iterdir()) == ["step-4", "step-6"]
    model, tok, _ = load(str(run / "ckpt" / "optimized"))
    assert tok.mask_token_id == tokenizer.mask_token_id and (run / "ckpt" / "optimized" / "config.yaml").is_file()
    assert "${" not in (run / "config.yaml").read_text()  # resolved
    base = load_file(str(REPO / "models" / "sdar-tiny" / "model.safetensors"))
    assert max_diff(weights(out), base) > 1e-5
    assert torch.equal(model.state_dict()["lm_head.weight"], weights(out)["model.embed_tokens.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["cpu_2_processes_ddp", "cpu_2_processes_deepspeed_zero1",
                                      "cpu_2_processes_deepspeed_zero3"])
def test_two_processes_equal_one_process_with_double_accumulation(tokenizer, tmp_path, topology):
    data = records_file(tokenizer, tmp_path, 16)
    common = ["training.batch_size_lm=2", "optimizer.params.learning_rate=1e-3", "lr_scheduler.params.warmup_steps=0",
              "training.reference_temp=0.5", "experiment.checkpoints_total_limit=null"]
    launch("self_ddo_sdar_full.py", t3d_args(data, tmp_path / "one", *common, "training.gradient_accumulation_steps=4",
                                             "training.num_threads=1", "experiment.save_every_steps=0"))
    two = t3d_args(data, tmp_path / "two", *common, "training.gradient_accumulation_steps=2",
                   "experiment.save_every_steps=1")
    launch("self_ddo_sdar_full.py", two, topology, tmp_path)
    rows_one, rows_two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(rows_one) == len(rows_two) == 4
    for a, b in zip(rows_one, rows_two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["tokens"] == b["tokens"]
    base = load_file(str(REPO / "models" / "sdar-tiny" / "model.safetensors"))
    assert max_diff(weights(tmp_path / "one"), base) > 1e-3  # training moved the weights
    difference = relative_difference(weights(tmp_path / "one"), weights(tmp_path / "two"), base)
    print(f"{topology}: relative update difference {difference:.2e}")
    assert difference < ORDER_TOLERANCE
    if "deepspeed" in topology:  # the sharded resume state restores the run exactly
        state = tmp_path / "two" / RUN / "state" / "step-1"
        resumed = t3d_args(data, tmp_path / "resumed", *common, "training.gradient_accumulation_steps=2",
                           f"training.resume_from_checkpoint={state}")
        launch("self_ddo_sdar_full.py", resumed, topology, tmp_path)
        assert max_diff(weights(tmp_path / "two"), weights(tmp_path / "resumed")) == 0.0


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(tokenizer, tmp_path):
    data = records_file(tokenizer, tmp_path, 24)
    common = ["training.batch_size_lm=2", "training.gradient_accumulation_steps=2", "experiment.save_every_steps=1",
              "optimizer.params.learning_rate=1e-3", "training.reference_temp=0.7", "training.num_threads=1"]
    launch("self_ddo_sdar_full.py", t3d_args(data, tmp_path / "full", *common))
    cmd = [sys.executable, "train/self_ddo_sdar_full.py", *t3d_args(data, tmp_path / "cut", *common)]
    victim = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "cut" / RUN / "state"
    deadline = time.time() + 120
    while not (state / "step-4").is_dir() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "cut" / RUN / "ckpt" / "optimized").exists(), "the run finished before the kill"
    # the same command again, no flags: it resumes (and says so) instead of starting over
    rerun = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = [ln for ln in rerun.stdout.splitlines() if ln.startswith("resuming from")]
    assert len(resumed) == 1 and f"{state}/step-" in resumed[0] and ": step " in resumed[0]
    full, cut = metrics(tmp_path / "full"), metrics(tmp_path / "cut")
    assert [r["step"] for r in cut] == [r["step"] for r in full] == list(range(1, 13))
    assert [r["loss"] for r in cut] == [r["loss"] for r in full]
    assert max_diff(weights(tmp_path / "full"), weights(tmp_path / "cut")) == 0.0  # bit-identical
    assert not list(state.glob(".tmp-*")) and not (tmp_path / "cut" / RUN / "previous").exists()
    # another setting: refused in one line naming it, nothing moved or changed
    before = sorted(p.name for p in state.iterdir())
    bad = subprocess.run([*cmd, "training.batch_size_lm=4"], cwd=REPO, env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert f"cannot resume from {state}/step-12: it belongs to a different run (training.batch_size_lm 2 -> 4)" in bad.stderr
    assert sorted(p.name for p in state.iterdir()) == before


def test_non_finite_loss_stops_naming_the_step(tiny_dir, tmp_path):
    from t3d.model.checkpoint import load

    model, tok, _ = load(str(tiny_dir))
    with torch.no_grad():  # finite weights (loading refuses NaN) whose logits overflow to inf
        model.model.norm.weight.fill_(3e38)
    model.save_pretrained(tmp_path / "huge-model")
    tok.save_pretrained(tmp_path / "huge-model")
    data = records_file(tok, tmp_path, 8)
    out = subprocess.run(
        [sys.executable, "train/self_ddo_sdar_full.py",
         *t3d_args(data, tmp_path / "exp", "experiment.save_every_steps=1", model=tmp_path / "huge-model")],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "self_ddo_sdar_full.py: error: non-finite loss at optimizer step 1; stopped without saving this step")
    assert not (tmp_path / "exp" / RUN / "ckpt").exists() and not (tmp_path / "exp" / RUN / "state").exists()


@pytest.mark.slow
def test_sft_from_scratch_and_fine_tune(tokenizer, tmp_path):
    from t3d.model.checkpoint import load

    items = [{"question": f"Compute {a}+{a + 1}.", "solution": f"{a}+{a + 1}={2 * a + 1}. \\boxed{{{2 * a + 1}}}"}
             for a in range(10, 42)]
    data = tmp_path / "items.json"
    data.write_text(json.dumps(items))
    common = [f"dataset.optimization_data={data}", f"experiment.output_dir={tmp_path}/exp", "training.batch_size_lm=8",
              "training.num_train_epochs=2", "lr_scheduler.params.warmup_steps=1", "training.num_threads=1"]
    launch("sft_sdar.py", ["config=configs/sft_sdar.yaml", *common, "model.scratch.hidden_size=96",
                           "model.scratch.num_hidden_layers=2"])
    rows = metrics(tmp_path / "exp", "sft_sdar")
    assert len(rows) == 8 and rows[-1]["loss"] < rows[0]["loss"]
    model, _, _ = load(str(tmp_path / "exp" / "sft_sdar" / "ckpt" / "sft"))
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.block_size) == (96, 2, 4)
    # fine-tune the SFT result (weights loaded, not re-initialised): its first loss is the scratch run's last level
    launch("sft_sdar.py", ["config=configs/sft_sdar.yaml", *common, "model.init_from_scratch=false",
                           f"model.pretrained_model={tmp_path}/exp/sft_sdar/ckpt/sft", "experiment.project=ft"])
    assert metrics(tmp_path / "exp", "ft")[0]["loss"] < rows[0]["loss"] - 0.5

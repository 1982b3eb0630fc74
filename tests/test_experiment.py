"""scripts/run_experiment.py's recovery report (results/: seed means, the recovery goal check, the table) and scripts/pipeline.py's
portable command lines, on hand-made rows."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import pipeline as pl  # noqa: E402
import run_experiment as rx  # noqa: E402


def row(checkpoint, S, accuracy, tokens_per_forward=1.0, valid=None):
    return {"checkpoint": checkpoint, "denoising_steps_per_block": S, "accuracy": accuracy,
            "tokens_per_forward": tokens_per_forward, "valid": valid}


ROWS = [row("base", 4, 0.90), row("base", 1, 0.50, 3.0),
        row("t3d_seed0", 4, 0.89), row("t3d_seed0", 1, 0.70, 3.0),
        row("t3d_seed1", 4, 0.89), row("t3d_seed1", 1, 0.80, 3.0),
        row("naive_seed0", 4, 0.80), row("naive_seed0", 1, 0.60, 3.0)]


def test_summary_groups_seeds_and_averages():
    summary = rx.recovery_summary(ROWS, [4, 1])
    assert list(summary) == ["base", "t3d", "naive"]
    t3d = summary["t3d"]
    assert t3d["seeds"] == 2 and t3d["label"] == "T3D"
    assert t3d["by_steps"]["1"]["accuracy"] == [0.70, 0.80]
    assert t3d["by_steps"]["1"]["accuracy_mean"] == pytest.approx(0.75)
    assert t3d["by_steps"]["1"]["accuracy_std"] == pytest.approx(0.0707107, abs=1e-6)  # sample std of (0.7, 0.8)
    assert summary["base"]["by_steps"]["4"]["accuracy_std"] == 0.0 and summary["base"]["seeds"] == 1
    assert t3d["by_steps"]["1"]["valid_mean"] is None  # no `solutions` in the items: no valid share


def test_goal_check_is_the_issue_rule():
    goal = rx.recovery_goal(rx.recovery_summary(ROWS, [4, 1]), 4, 1)
    # base gap 0.40; T3D recovers (0.75 - 0.50) / 0.40 = 62.5% and loses 1 point at S=4: met
    assert goal["base_gap"] == pytest.approx(0.40)
    assert goal["t3d_gap_recovered"] == pytest.approx(0.625)
    assert goal["t3d_full_step_drop"] == pytest.approx(0.01)
    assert goal["met"] is True
    assert goal["naive_gap_recovered"] == pytest.approx(0.25) and goal["naive_full_step_drop"] == pytest.approx(0.10)
    # losing 3 points at full steps fails the goal, however much of the gap is recovered
    worse = [dict(r, accuracy=0.87) if r["checkpoint"].startswith("t3d") and r["denoising_steps_per_block"] == 4 else r
             for r in ROWS]
    assert rx.recovery_goal(rx.recovery_summary(worse, [4, 1]), 4, 1)["met"] is False
    # no gap: nothing to recover, never met
    flat = [dict(r, accuracy=0.9) for r in ROWS]
    assert rx.recovery_goal(rx.recovery_summary(flat, [4, 1]), 4, 1)["t3d_gap_recovered"] is None


def test_markdown_table():
    summary = rx.recovery_summary(ROWS, [4, 1])
    text = rx.recovery_markdown(summary, [4, 1], rx.recovery_goal(summary, 4, 1))
    lines = text.splitlines()
    assert lines[2] == "| base | 90.0 | 50.0 | – | – | 1.00 / 3.00 |"
    assert lines[3] == "| T3D (2 seeds) | 89.0 ± 0.0 | 75.0 ± 7.1 | – | – | 1.00 / 3.00 |"
    assert "T3D recovers 62% of it at S=1; its S=4 accuracy changes by -1.0 points" in text and "met." in text
    flat = rx.recovery_summary([dict(r, accuracy=0.9) for r in ROWS], [4, 1])  # no gap: a table, not a crash
    assert "0.0 points: nothing to recover, so the goal cannot be met." in rx.recovery_markdown(flat, [4, 1], rx.recovery_goal(flat, 4, 1))


def test_valid_share_reads_items_jsonl(tmp_path):
    items = [{"solutions": ["1+2=3. \\boxed{3}", "The sum is 3. \\boxed{3}"]}, {"solutions": ["2+2=4. \\boxed{4}"]}]
    run_dir = tmp_path / "base-synthetic_math_val" / "B4-S1-low_confidence_static-T0-len64-k1-seed0"
    run_dir.mkdir(parents=True)
    outputs = [{"index": 0, "output": "The sum is 3. \\boxed{3}<|im_end|>"}, {"index": 1, "output": "2+2=5. \\boxed{4}"}]
    (run_dir / "items.jsonl").write_text("\n".join(json.dumps(o) for o in outputs) + "\n")
    r = dict(row("base", 1, 0.5), run_dir=str(run_dir))  # eval.py's metrics name their result directory
    assert rx.valid_share(r, items) == 0.5
    assert rx.valid_share(r, [{}, {}]) is None


def test_portable_commands_run_anywhere(tmp_path):
    cmd = pl.eval_command({"base": ROOT / "models" / "sdar-tiny", "t3d": ROOT / "experiments" / "x"},
                          ROOT / "data" / "synthetic_math_test.json", ROOT / "experiments" / "o", "p")
    line = pl.shell_line(cmd, portable=True)
    assert str(ROOT) not in line and line.startswith("python eval.py config=configs/eval.yaml ")
    assert '"sweep.checkpoints=[base=${ROOT}/models/sdar-tiny,t3d=${ROOT}/experiments/x]"' in line
    rollout, cwd = pl.rollout_command(ROOT / "models" / "sdar-tiny", ROOT / "data" / "x.json", ROOT / "experiments")
    assert pl.shell_line(rollout, cwd, portable=True).startswith("(cd sample && python sdar_sample.py config=../configs/")
    # the shell expands ${ROOT} to the arguments the command was built with, list overrides included
    script = rx.commands_script([{"stage": "eval", "seconds": 1.0, "portable": line.replace("python eval.py", "printf '%s\\n'")}])
    (tmp_path / "c.sh").write_text(script)
    out = subprocess.run(["bash", str(tmp_path / "c.sh")], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [str(c) for c in cmd[2:]]


def test_naive_baseline_has_the_t3d_budget():
    """The baseline differs from T3D only in its objective: same base, batch, epochs and learning-rate schedule."""
    from omegaconf import OmegaConf

    t3d = OmegaConf.load(ROOT / "configs" / "t3d_tiny.yaml")
    naive = OmegaConf.load(ROOT / "configs" / "experiments" / "naive_sd_tiny.yaml")
    sft = OmegaConf.load(ROOT / "configs" / "sft_tiny.yaml")
    for key in ("model.pretrained_model", "training.batch_size_lm", "training.gradient_accumulation_steps",
                "training.num_train_epochs", "training.block_size", "training.post_num", "optimizer",
                "lr_scheduler", "experiment.max_grad_norm"):
        assert OmegaConf.select(naive, key) == OmegaConf.select(t3d, key), key
    assert naive.dataset.source == "rollouts" and naive.model.init_from_scratch is False
    # and it is a valid sft_sdar.py config: the same keys as the SFT recipe
    from t3d.common.config import _flat_keys

    keys = lambda cfg: set(_flat_keys(OmegaConf.to_container(cfg, resolve=False)))  # noqa: E731
    assert keys(naive) == keys(sft)


"""scripts/run_experiment.py with the chain study (configs/experiments/study_chain.yaml, results/v2/): the report on hand-made rows (seed means, AUP per seed, full-step changes, the
goal rule), and the whole pipeline through the CLIs on a tiny slice (slow)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import run_experiment as v2  # noqa: E402
from t3d.eval.aup import aup  # noqa: E402

CHAIN = v2.load_experiment(ROOT / "configs" / "experiments" / "study_chain.yaml")
LABELS = {name: spec["label"] for name, spec in CHAIN["methods"].items()}


def summarize(rows, ood_rows, steps, block_size):
    return v2.summarize(rows, ood_rows, steps, block_size, LABELS)


def row(checkpoint, S, accuracy, tpf, kind="steps"):
    setting = f"S={S}" if kind == "steps" else f"τ={S}"
    return {"checkpoint": checkpoint, "sweep_kind": kind, "setting": setting, "accuracy": accuracy,
            "tokens_per_forward": tpf, "tokens_per_forward_no_prefill": tpf + 0.5}


ROWS = [row("base", 2, 0.80, 1.0), row("base", 1, 0.40, 2.0),
        row("base", 0.9, 0.78, 1.5, "threshold"), row("base", 0.5, 0.70, 1.8, "threshold"),
        row("t3d_seed0", 2, 0.80, 1.0), row("t3d_seed0", 1, 0.78, 2.0),
        row("t3d_seed1", 2, 0.79, 1.0), row("t3d_seed1", 1, 0.76, 2.0),
        row("naive_seed0", 2, 0.70, 1.0), row("naive_seed0", 1, 0.68, 2.0)]
OOD = [row("base", 2, 0.50, 1.0), row("t3d_seed0", 2, 0.45, 1.0), row("t3d_seed1", 2, 0.47, 1.0),
       row("naive_seed0", 2, 0.30, 1.0)]


def test_summary_seed_means_aup_and_full_step_changes():
    s = summarize(ROWS, OOD, [2, 1], 2)
    assert list(s) == ["base", "base_dynamic", "naive", "t3d"]  # fixed order, whatever the row order
    t3d = s["t3d"]
    assert t3d["seeds"] == 2 and t3d["by_setting"]["S=1"]["accuracy"] == [0.78, 0.76]
    assert t3d["by_setting"]["S=1"]["accuracy_mean"] == pytest.approx(0.77)
    assert t3d["by_setting"]["S=1"]["tokens_per_forward_no_prefill"] == pytest.approx(2.5)
    # AUP per seed with y_max = the best accuracy of the whole comparison (80%)
    want0 = aup([(1.0, 80.0), (2.0, 78.0)], 80.0)[0]
    # by hand: 1 * 80 + 0.5 * (2 - 1) * (78 * exp(-3 * (1 - 78/80)) + 80)
    assert want0 == pytest.approx(80 + 0.5 * (78 * math.exp(-3 * 0.025) + 80))
    assert t3d["aup"]["t3d_seed0"] == pytest.approx(want0)
    assert t3d["aup_min"] == t3d["aup"]["t3d_seed1"] and t3d["aup_max"] == pytest.approx(want0)
    # the base's S=1 point is more than 5 points below S=2: AUP drops it
    assert s["base"]["aup_mean"] == pytest.approx(80.0)
    assert s["base_dynamic"]["aup"]["base"] == pytest.approx(aup([(1.5, 78.0), (1.8, 70.0)], 80.0)[0])
    assert t3d["full_step_change"] == pytest.approx(-0.005) and s["naive"]["full_step_change"] == pytest.approx(-0.10)
    assert t3d["ood_full_step_change"] == pytest.approx(-0.04) and s["naive"]["ood_full_step_change"] == pytest.approx(-0.20)
    assert s["base"]["full_step_change"] is None and s["base_dynamic"]["ood_full_step"] is None


def test_goal_is_non_overlapping_aup_and_full_step_within_one_point():
    goal = v2.goal_check(summarize(ROWS, OOD, [2, 1], 2))
    assert goal["aup_beats"] == {"base": True, "base_dynamic": True, "naive": True}
    assert goal["full_step_kept"] and goal["met"]
    # a T3D seed whose AUP falls below the naive baseline's: ranges overlap, not met
    weak = [dict(r, accuracy=0.55) if (r["checkpoint"], r["setting"]) == ("t3d_seed1", "S=1") else r for r in ROWS]
    goal = v2.goal_check(summarize(weak, OOD, [2, 1], 2))
    assert goal["aup_beats"]["naive"] is False and goal["met"] is False
    # exactly 1 point lost (as computed from k/n accuracies) is within the goal
    one = [dict(r, accuracy=0.79) if (r["checkpoint"], r["setting"]) in {("t3d_seed0", "S=2"), ("t3d_seed1", "S=2")}
           else r for r in ROWS]
    assert v2.goal_check(summarize(one, OOD, [2, 1], 2))["full_step_kept"] is True
    # 1.5 points lost at full steps: not met, however good the AUP
    lost = [dict(r, accuracy=0.785) if (r["checkpoint"], r["setting"]) in {("t3d_seed0", "S=2"), ("t3d_seed1", "S=2")}
            else r for r in ROWS]
    goal = v2.goal_check(summarize(lost, OOD, [2, 1], 2))
    assert goal["full_step_change"] == pytest.approx(-0.015) and not goal["full_step_kept"] and not goal["met"]


def test_trained_checkpoints_are_scored_per_decoder_and_t3d_takes_its_better_one():
    """Threshold rows of a trained checkpoint form `<method>_dynamic`, scored apart from its static points; the
    goal takes T3D with the decoder whose lowest seed is higher and holds it against both decoders of each
    baseline."""
    dyn = [row("t3d_seed0", 0.9, 0.80, 2.5, "threshold"), row("t3d_seed0", 0.5, 0.78, 3.0, "threshold"),
           row("t3d_seed1", 0.9, 0.79, 2.4, "threshold"), row("t3d_seed1", 0.5, 0.77, 2.9, "threshold"),
           row("naive_seed0", 0.9, 0.78, 2.2, "threshold"), row("naive_seed0", 0.5, 0.70, 2.6, "threshold")]
    s = summarize(ROWS + dyn, OOD, [2, 1], 2)
    assert list(s) == ["base", "base_dynamic", "naive", "naive_dynamic", "t3d", "t3d_dynamic"]
    assert s["t3d_dynamic"]["label"] == "T3D (dynamic τ)" and s["t3d_dynamic"]["seeds"] == 2
    # y_max = 80, the best of all rows; by hand: 2.5 * 80 + 0.5 * (3.0 - 2.5) * (78 * exp(-3 * (1 - 78/80)) + 80)
    assert s["t3d_dynamic"]["aup"]["t3d_seed0"] == pytest.approx(200 + 0.25 * (78 * math.exp(-0.075) + 80))
    assert s["t3d_dynamic"]["aup"]["t3d_seed1"] == pytest.approx(aup([(2.4, 79.0), (2.9, 77.0)], 80.0)[0])
    assert s["t3d_dynamic"]["full_step_change"] is None and s["t3d_dynamic"]["ood_full_step"] is None
    assert s["t3d"]["aup"] == summarize(ROWS, OOD, [2, 1], 2)["t3d"]["aup"]  # static points unchanged
    goal = v2.goal_check(s)
    assert goal["t3d_decoder"] == "t3d_dynamic" and goal["aup_beats"]["naive_dynamic"] is True and goal["met"]
    # naive's dynamic decoder above T3D's best lowest seed: not met
    strong = dyn + [row("naive_seed0", 0.3, 0.80, 4.0, "threshold")]
    goal = v2.goal_check(summarize(ROWS + strong, OOD, [2, 1], 2))
    assert goal["aup_beats"]["naive_dynamic"] is False and not goal["met"]
    # a seeded T3D variant (the val-chosen beta) gets the same check under its own name
    variant = [dict(r, checkpoint=r["checkpoint"].replace("t3d_", "t3d_beta1_")) for r in ROWS + dyn
               if r["checkpoint"].startswith("t3d_")]
    s = summarize(ROWS + dyn + variant, OOD, [2, 1], 2)
    assert s["t3d_beta1_dynamic"]["label"] == "T3D, β = 1 (chosen on val) (dynamic τ)"
    goal = v2.goal_check(s, "t3d_beta1")
    assert goal["method"] == "t3d_beta1" and goal["t3d_decoder"] == "t3d_beta1_dynamic" and goal["met"]


def test_table_lines():
    s = summarize(ROWS, OOD, [2, 1], 2)
    lines = v2.markdown(s, [2, 1], [v2.goal_check(s)], 2).splitlines()
    assert lines[2] == "| base | 1 | 80.0 | 40.0 | 1.00 / 2.00 | 1.50 / 2.50 | 80.0 | – | – |"
    assert lines[3].startswith("| base (dynamic τ) | 1 | τ=0.9: 78.0; τ=0.5: 70.0 |  | 1.50 / 1.80 |")
    assert lines[5].startswith("| T3D | 2 | 79.5 ± 0.7 | 77.0 ± 1.4 | 1.00 / 2.00 | 1.50 / 2.50 | ")
    assert lines[5].endswith(" | -0.5 | -4.0 |")
    assert lines[-1].endswith("-> MET.")


def test_methods_share_the_budget_and_differ_in_one_key():
    """Every trained method reads the same records with the same epochs, batch and schedule; an ablation is
    T3D with exactly one key changed."""
    from omegaconf import OmegaConf

    from t3d.common.config import _flat_keys

    t3d = OmegaConf.load(ROOT / "configs" / "t3d_chain.yaml")
    naive = OmegaConf.load(ROOT / "configs" / "experiments" / "naive_sd_chain.yaml")
    for key in ("model.pretrained_model", "training.batch_size_lm", "training.gradient_accumulation_steps",
                "training.num_train_epochs", "training.block_size", "training.post_num", "optimizer",
                "lr_scheduler", "experiment.max_grad_norm", "dataset.optimization_data"):
        assert OmegaConf.select(naive, key) == OmegaConf.select(t3d, key), key
    assert t3d.training.block_size == 8 and t3d.training.lambda_ddo == 1.0 and t3d.training.multi_round is True
    keys = lambda p: set(_flat_keys(OmegaConf.to_container(OmegaConf.load(ROOT / p), resolve=False)))  # noqa: E731
    assert keys("configs/t3d_chain.yaml") == keys("configs/ddo_sdar_full_self.yaml")
    assert keys("configs/experiments/naive_sd_chain.yaml") == keys("configs/sft_tiny.yaml")  # sft_sdar.py's keys
    for name, spec in CHAIN["methods"].items():
        overrides = spec.get("overrides") or {}
        if CHAIN["trainers"][spec["trainer"]]["script"] == "self_ddo_sdar_full.py":
            assert len(overrides) == (0 if name == "t3d" else 1), name
            for key, value in overrides.items():
                assert OmegaConf.select(t3d, key) != value, (name, key)


@pytest.mark.slow
def test_pipeline_on_a_tiny_slice(tmp_path):
    """rollout -> train (T3D, naive, path-only) -> tune -> eval -> report through the CLIs, on 8 questions of the
    math smoke set with the tiny model at B=4; the report's numbers agree with its own rows."""
    data = tmp_path / "data"
    data.mkdir()
    smoke = json.loads((ROOT / "data" / "synthetic_math_smoke.json").read_text())
    for split in ("train", "val", "test", "ood"):
        (data / f"mini_{split}.json").write_text(json.dumps(smoke[:8]))
    out, results = tmp_path / "out", tmp_path / "results"
    v2.main(["--experiment", str(ROOT / "configs" / "experiments" / "study_chain.yaml"), "--base", str(ROOT / "models" / "sdar-tiny"), "--out", str(out), "--results", str(results),
             "--data-dir", str(data), "--task", "mini", "--block-size", "4", "--max-token", "40",
             "--rollout-questions", "8", "--methods", "naive,t3d,path_only", "--seeds", "0", "--thresholds", "0.9,0.5",
             "--train-override", "training.block_size=4", "--train-override", "training.post_num=3",
             "--train-override", "training.batch_size_lm=4", "--train-override", "lr_scheduler.params.warmup_steps=1"])
    report = json.loads((results / "results.json").read_text())
    summary, runs = report["summary"], report["runs"]
    assert list(summary) == ["base", "base_dynamic", "naive", "naive_dynamic", "t3d", "t3d_dynamic", "path_only",
                             "path_only_dynamic"]
    assert report["setup"]["eval_items"] == 8 and report["setup"]["steps"] == [4, 2, 1]
    checkpoints = {r["checkpoint"] for r in runs}
    assert checkpoints == {"base", "naive_seed0", "t3d_seed0", "path_only_seed0"}
    # AUP recomputed from the rows, y_max = the best accuracy of the comparison
    y_max = 100 * max(r["accuracy"] for r in runs)
    for name, ckpt in (("t3d", "t3d_seed0"), ("naive", "naive_seed0"), ("base", "base")):
        pts = [(r["tokens_per_forward"], 100 * r["accuracy"]) for r in runs
               if r["checkpoint"] == ckpt and r["sweep_kind"] == "steps"]
        assert len(pts) == 3 and summary[name]["aup"][ckpt] == pytest.approx(aup(pts, y_max)[0])
    thresholds = json.loads((out / "thresholds.json").read_text())
    assert set(thresholds["chosen"]) <= {0.9, 0.5}
    assert sorted(summary["base_dynamic"]["by_setting"]) == sorted(f"τ={t}" for t in thresholds["chosen"])
    # full-step changes against the base, on test and on ood (evaluated at S=B only)
    acc = {(r["checkpoint"], r["setting"]): r["accuracy"] for r in runs}
    ood = {r["checkpoint"]: r["accuracy"] for r in report["ood_runs"]}
    assert {r["setting"] for r in report["ood_runs"]} == {"S=4"} and set(ood) == checkpoints
    assert summary["t3d"]["full_step_change"] == pytest.approx(acc["t3d_seed0", "S=4"] - acc["base", "S=4"])
    assert summary["naive"]["ood_full_step_change"] == pytest.approx(ood["naive_seed0"] - ood["base"])
    assert isinstance(report["goal"]["met"], bool)
    # path-only really trained without the DDO term: loss = lambda_path * path at every step
    steps = [json.loads(line) for line in (out / "path_only_seed0" / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "path" in s]
    assert steps and all(s["loss"] == pytest.approx(0.2 * s["path"], rel=1e-6) for s in steps)
    table = (results / "table.md").read_text().split("\n### ")[0].splitlines()  # the study's table; then uncertainty
    extra = (results / "table.md").read_text()
    assert "### AUP beside full-step (S=4) accuracy" in extra and "### Paired differences" in extra
    assert {"S=4", "S=1", "AUP"} <= {c["metric"] for c in report["comparisons"]}
    assert all(c["low"] <= c["diff"] + 1e-9 and c["diff"] <= c["high"] + 1e-9 for c in report["comparisons"])
    assert len([line for line in table if line.startswith("| ")]) == 1 + len(summary)
    assert (results / "accuracy_vs_tokens_per_forward.png").stat().st_size > 10_000
    commands = (results / "commands.sh").read_text()
    assert "# train_path_only_seed0: " in commands and "training.lambda_ddo=0.0" in commands
    subprocess.run(["bash", "-n", str(results / "commands.sh")], check=True)
    # a rerun resumes: every finished job is kept (nothing decoded or trained again), the timings add up
    seconds = json.loads((out / "stage_seconds.json").read_text())
    history = (out / "logs" / "history.jsonl").read_text().count("\n")
    v2.main(["--experiment", str(ROOT / "configs" / "experiments" / "study_chain.yaml"), "--base",
             str(ROOT / "models" / "sdar-tiny"), "--out", str(out), "--results", str(results),
             "--data-dir", str(data), "--task", "mini", "--block-size", "4", "--max-token", "40",
             "--rollout-questions", "8", "--methods", "naive,t3d,path_only", "--seeds", "0", "--thresholds", "0.9,0.5",
             "--train-override", "training.block_size=4", "--train-override", "training.post_num=3",
             "--train-override", "training.batch_size_lm=4", "--train-override", "lr_scheduler.params.warmup_steps=1",
             "--stages", "rollout,train,tune,eval,report"])
    assert (out / "logs" / "history.jsonl").read_text().count("\n") == history  # no command ran
    again = json.loads((out / "stage_seconds.json").read_text())
    assert again["train"] >= seconds["train"] and again["report"] > seconds["report"]
    assert json.loads((results / "results.json").read_text())["summary"] == summary

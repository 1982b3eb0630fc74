"""scripts/run_experiment.py's uncertainty report (paired bootstrap over items, AUP beside full-step accuracy, the
full-step flags), the experiment files, and resuming: on hand-made inputs."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import pipeline as pl  # noqa: E402
import run_experiment as rx  # noqa: E402
import uncertainty as unc  # noqa: E402
from t3d.eval.aup import aup  # noqa: E402


# ------------------------------------------------------------------------------------------------ bootstrap
def test_identical_methods_give_a_zero_centred_symmetric_interval():
    a = np.array([[1, 0, 1, 1, 0, 0, 1, 0]], dtype=float)
    d = unc.paired_difference(a, a.copy())
    assert d == {"diff": 0.0, "low": 0.0, "high": 0.0}  # paired: every resample differs by exactly 0


def test_a_method_right_wherever_the_other_misses_gives_the_point_interval():
    right, wrong = np.ones((1, 50)), np.zeros((1, 50))
    assert unc.paired_difference(right, wrong) == {"diff": 1.0, "low": 1.0, "high": 1.0}
    # any constant per-item difference d gives [d, d]: two seeds (one right everywhere, one wrong) against 0
    half = np.array([[1.0] * 10, [0.0] * 10])
    assert unc.paired_difference(half, np.zeros((1, 10))) == {"diff": 0.5, "low": 0.5, "high": 0.5}


def test_two_items_by_hand():
    """Per-item differences (1, 0): a resample's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so the
    95% interval is [0, 1] and the point estimate 1/2."""
    a, b = np.array([[1.0, 0.0]]), np.array([[0.0, 0.0]])
    d = unc.paired_difference(a, b, unc.resample_indices(2, 4000))
    assert d == {"diff": 0.5, "low": 0.0, "high": 1.0}
    means = a[0][unc.resample_indices(2, 4000)].mean(1)
    assert abs((means == 0.5).mean() - 0.5) < 0.03  # the resampling really is uniform over the items


def test_swapping_the_methods_negates_the_interval():
    rng = np.random.default_rng(3)
    a, b = (rng.random((2, 40)) < 0.6).astype(float), (rng.random((3, 40)) < 0.5).astype(float)
    ab, ba = unc.paired_difference(a, b), unc.paired_difference(b, a)
    assert ab["diff"] == pytest.approx(-ba["diff"])
    assert ab["low"] == pytest.approx(-ba["high"]) and ab["high"] == pytest.approx(-ba["low"])
    assert ab["low"] <= ab["diff"] <= ab["high"]
    assert ab["diff"] == pytest.approx(a.mean() - b.mean())  # the seed-mean accuracy difference
    assert unc.paired_difference(a, b) == ab  # fixed seed: the same report every time


def test_resampled_aup_observed_value_is_the_seed_mean_aup():
    c1 = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=float)  # two seeds at the slow setting: 75%, 50%
    c2 = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=float)  # at the fast one: 50%, 25%
    obs, res = unc.resampled_aup([(1.0, c1), (2.0, c2)], unc.resample_indices(4, 100), 75.0)
    want = (aup([(1.0, 75.0), (2.0, 50.0)], 75.0)[0] + aup([(1.0, 50.0), (2.0, 25.0)], 75.0)[0]) / 2
    assert obs == pytest.approx(want) and res.shape == (100,)
    same = unc.paired_aup_difference([(1.0, c1), (2.0, c2)], [(1.0, c1), (2.0, c2)], 75.0, unc.resample_indices(4))
    assert same == {"diff": 0.0, "low": 0.0, "high": 0.0}


def test_item_correctness_averages_replicas(tmp_path):
    lines = [{"index": 0, "replica": 0, "correct": True}, {"index": 0, "replica": 1, "correct": False},
             {"index": 1, "replica": None, "error": "too long", "correct": False}]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert unc.item_correctness(tmp_path) == {0: 0.5, 1: 0.0}


# ------------------------------------------------------------------------------------- the report sections
def _result(tmp_path, checkpoint, setting, correct, tpf, kind="steps"):
    run_dir = tmp_path / checkpoint / setting
    run_dir.mkdir(parents=True)
    (run_dir / "items.jsonl").write_text("".join(json.dumps({"index": i, "replica": 0, "correct": bool(c)}) + "\n"
                                                 for i, c in enumerate(correct)))
    steps = int(setting[2:]) if kind == "steps" else 2
    return {"checkpoint": checkpoint, "sweep_kind": kind, "setting": setting, "denoising_steps_per_block": steps,
            "accuracy": sum(correct) / len(correct), "tokens_per_forward": tpf,
            "tokens_per_forward_no_prefill": tpf, "run_dir": str(run_dir)}


@pytest.fixture
def rows(tmp_path):
    # 10 items; base 80% at S=2, 40% at S=1; t3d seeds 80%/70% at S=2 (seed 1 loses 1 point + more: flagged)
    r = _result
    return [r(tmp_path, "base", "S=2", [1] * 8 + [0] * 2, 1.0), r(tmp_path, "base", "S=1", [1] * 4 + [0] * 6, 2.0),
            r(tmp_path, "t3d_seed0", "S=2", [1] * 8 + [0] * 2, 1.0), r(tmp_path, "t3d_seed0", "S=1", [1] * 7 + [0] * 3, 2.0),
            r(tmp_path, "t3d_seed1", "S=2", [1] * 7 + [0] * 3, 1.0), r(tmp_path, "t3d_seed1", "S=1", [1] * 7 + [0] * 3, 2.0),
            r(tmp_path, "t3d_seed0", "τ=0.9", [1] * 8 + [0] * 2, 1.5, "threshold"),
            r(tmp_path, "t3d_seed0", "τ=0.5", [1] * 7 + [0] * 3, 2.5, "threshold"),
            r(tmp_path, "t3d_seed1", "τ=0.9", [1] * 7 + [0] * 3, 1.5, "threshold"),
            r(tmp_path, "t3d_seed1", "τ=0.5", [1] * 7 + [0] * 3, 2.5, "threshold")]


def test_full_step_flags_and_aup_beside_full_step(rows):
    flags = rx.full_step_flags(rows, 2)
    assert flags == [{"checkpoint": "t3d_seed1", "accuracy": 0.7, "base": 0.8, "change": pytest.approx(-0.1)}]
    one_point = [dict(r, accuracy=0.79) if (r["checkpoint"], r["setting"]) == ("t3d_seed1", "S=2") else r for r in rows]
    assert rx.full_step_flags(one_point, 2) == []  # exactly 1 point below is within
    summary = rx.summarize(rows, [], [2, 1], 2, {"t3d": "T3D"})
    table = rx.full_step_table(summary, 2)
    assert table["t3d"]["full_step_mean"] == pytest.approx(0.75) and table["t3d"]["full_step_min"] == 0.7
    # the dynamic decoder's row carries its checkpoints' static S=B accuracy beside its own AUP
    assert table["t3d_dynamic"]["full_step_mean"] == pytest.approx(0.75)
    assert table["t3d_dynamic"]["aup_mean"] == summary["t3d_dynamic"]["aup_mean"]
    assert table["t3d"]["full_step_change"] == pytest.approx(-0.05) and table["base"]["full_step_change"] is None
    text = rx.uncertainty_markdown(summary, flags, [], 2)
    assert "| T3D | 2 | " in text and "| 75.0 ± 7.1 [70.0, 80.0] | -5.0 |" in text
    assert "t3d_seed1 70.0% (-10.0)" in text


def test_bootstrap_comparisons_match_the_summary(rows):
    summary = rx.summarize(rows, [], [2, 1], 2, {"t3d": "T3D"})
    comps, intervals = rx.bootstrap_comparisons(rows, summary, [("t3d", "base")])
    by = {c["metric"]: c for c in comps}
    assert set(by) == {"S=2", "S=1", "AUP"}
    assert by["S=1"]["diff"] == pytest.approx(0.7 - 0.4)
    # S=1: t3d is right on items 0-6 in both seeds, base on items 0-3: per-item difference 1 on items 4-6, else 0
    assert 0 <= by["S=1"]["low"] < by["S=1"]["diff"] < by["S=1"]["high"] <= 0.7
    assert by["S=2"]["diff"] == pytest.approx(-0.05)
    assert by["AUP"]["diff"] == pytest.approx(summary["t3d"]["aup_mean"] - summary["base"]["aup_mean"])
    assert by["AUP"]["low"] <= by["AUP"]["diff"] <= by["AUP"]["high"]
    text = rx.uncertainty_markdown(summary, [], comps, 2)
    assert "| T3D − base | -5.0 [" in text and "+30.0 [" in text
    # each group's own AUP interval: around its seed-mean AUP, from the same resamples
    for name in ("t3d", "base"):
        assert intervals[name]["aup"] == pytest.approx(summary[name]["aup_mean"])
        assert intervals[name]["low"] <= intervals[name]["aup"] <= intervals[name]["high"]
    # the goal with item intervals: met only when T3D's interval is entirely above the baseline's
    goal = rx.goal_check(summary, "t3d", baselines=["base"], intervals=intervals)
    overlap = intervals["t3d"]["low"] <= intervals["base"]["high"]
    assert goal["aup_beats_item_intervals"] == {"base": not overlap}
    assert goal["met"] is (goal["aup_beats"]["base"] and goal["full_step_kept"] and not overlap)
    far = dict(intervals, base={"aup": 0.0, "low": -2.0, "high": -1.0})
    assert rx.goal_check(summary, "t3d", baselines=["base"], intervals=far)["aup_beats_item_intervals"] == {"base": True}


# --------------------------------------------------------------------------------- experiments and resuming
def test_experiment_files_load_and_flags_override():
    for name in ("study_tiny", "study_chain", "study_tiny_ablations", "demo_val", "tune_chain_v3"):
        exp = rx.load_experiment(ROOT / "configs" / "experiments" / f"{name}.yaml")
        for spec in exp["trainers"].values():
            assert (ROOT / spec["config"]).is_file()
    args = rx.parse_args(["--experiment", str(ROOT / "configs/experiments/study_chain.yaml"), "--seeds", "4",
                          "--methods", "t3d,naive", "--block-size", "4", "--thresholds", "", "--train-override",
                          "training.beta=2"])
    exp = args.exp
    assert exp["seeds"]["main"] == [4] and list(exp["methods"]) == ["t3d", "naive"] and exp["block_size"] == 4
    assert exp["steps"] == [4, 2, 1] and exp["thresholds"] == [] and exp["train_overrides"] == {"training.beta": "2"}
    assert rx.parse_args([]).exp["goal"] == "recovery"  # the default: the study behind results/


def test_unknown_experiment_key_is_an_error(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text((ROOT / "configs/experiments/study_tiny.yaml").read_text() + "\nseedz: [1]\n")
    with pytest.raises(rx.ExperimentError, match="unknown keys"):
        rx.load_experiment(bad)


def test_finished_jobs_are_kept_and_changed_ones_refused(tmp_path, monkeypatch):
    args = rx.parse_args(["--experiment", str(ROOT / "configs/experiments/study_tiny.yaml"), "--out", str(tmp_path),
                          "--seeds", "0"])
    exp = rx.Experiment(args)
    ran = []
    monkeypatch.setattr(exp.run, "parallel", lambda jobs, workers: ran.extend(name for name, *_ in jobs))
    name, cmd = exp.train_job("t3d", 0)
    ckpt = exp.checkpoint("t3d", 0)
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    with open(tmp_path / "logs" / "history.jsonl", "a") as f:
        f.write(json.dumps({"stage": name, "command": pl.shell_line(cmd), "seconds": 1.0, "exit": 0}) + "\n")
    exp.stage_train()
    assert ran == ["train_naive_seed0"]  # t3d_seed0 finished with this command: not run again
    args.exp["train_overrides"] = {"training.beta": "1.0"}
    with pytest.raises(pl.StageError, match="finished .* with another command"):
        rx.Experiment(args).stage_train()
    # the stage timing file adds up the parts of a run
    exp.stage_seconds({"train": 10.0})
    exp.stage_seconds({"train": 5.5, "eval": 1.0})
    assert exp.stage_seconds() == {"train": 15.5, "eval": 1.0}


def test_curve_steps_checkpoint_step_and_extra_splits(tmp_path):
    """curve_steps evaluates each run's step checkpoints as <method>_step<N>_seed<s>; a method's checkpoint_step
    makes its evaluated checkpoint that step's (the run still trains its whole schedule); extra splits get the full
    static + dynamic evaluation when the split is test."""
    exp_file = tmp_path / "e.yaml"
    spec = rx.load_experiment(ROOT / "configs/experiments/study_chain.yaml")
    spec.update(curve_steps=[32, 64], extra_splits=["fresh"], thresholds=[], out=str(tmp_path / "out"),
                methods={"t3d": {"label": "T3D", "trainer": "t3d", "checkpoint_step": 64},
                         "naive": {"label": "naive", "trainer": "naive"}},
                seeds={"main": [0]})
    exp_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    exp = rx.Experiment(rx.parse_args(["--experiment", str(exp_file)]))
    ckpts = exp.checkpoints()
    run = tmp_path / "out" / "t3d_seed0" / "ckpt"
    assert ckpts["t3d_seed0"] == run / "optimized-step64"
    assert ckpts["t3d_step32_seed0"] == run / "optimized-step32"
    assert ckpts["naive_seed0"] == tmp_path / "out" / "naive_seed0" / "ckpt" / "naive"
    assert list(ckpts) == ["base", "t3d_step32_seed0", "t3d_step64_seed0", "t3d_seed0", "naive_step32_seed0",
                           "naive_step64_seed0", "naive_seed0"]
    names = [name for name, _ in exp.eval_jobs()]
    assert names == ["eval_test_static0", "eval_test_static1", "eval_fresh_static0", "eval_fresh_static1",
                     "eval_ood_full0", "eval_ood_full1"]
    assert exp.split_of("eval_fresh_static1") == "fresh"
    fresh_cmd = dict(exp.eval_jobs())["eval_fresh_static0"]
    assert any(a.endswith("synthetic_chain_fresh.json") for a in fresh_cmd)
    # a val study does not read the extra splits; a missing extra split file is one line naming it
    assert exp.report_splits() == ["test", "fresh"]
    spec.update(extra_splits=["nowhere"])
    exp_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(rx.ExperimentError, match="extra_splits: no file .*synthetic_chain_nowhere.json"):
        rx.Experiment(rx.parse_args(["--experiment", str(exp_file)]))


def test_choose_on_val_rule_by_hand():
    """Per family (name up to _lr): the highest AUP of the better decoder among candidates within 1 point of the
    base at S=B; none within: the best S=B accuracy. Step checkpoints are epochs (32 steps per epoch here)."""
    import choose_on_val as cv

    def group(full, aup, aup_dyn=None):
        g = {"by_setting": {"S=8": {"accuracy_mean": full}}, "aup_mean": aup}
        return g, ({"aup_mean": aup_dyn} if aup_dyn is not None else None)

    entries = {"base": group(0.545, 50.0, 150.0),
               "t3d_lr1e-3_step32": group(0.540, 60.0, 170.0),   # 0.5 below the base: kept, best dynamic AUP
               "t3d_lr1e-3": group(0.530, 70.0, 190.0),          # 1.5 below: not kept despite the best AUP
               "t3d_lr3e-4_step64": group(0.560, 80.0, 60.0),    # kept; its better decoder is static: 80
               "naive_lr1e-3": group(0.500, 90.0),               # no candidate of naive keeps S=B:
               "naive_lr3e-4_step32": group(0.520, 10.0)}        # the best S=B accuracy instead
    summary = {}
    for name, (g, dyn) in entries.items():
        summary[name] = g
        if dyn:
            summary[name + rx.DYNAMIC] = dyn
    cands = cv.candidates(summary, 0.545, 8, [32, 64], 3)
    assert cands[("t3d", "lr1e-3", 1)]["kept"] and not cands[("t3d", "lr1e-3", 3)]["kept"]
    assert cands[("t3d", "lr3e-4", 2)]["decoder"] == "static" and cands[("t3d", "lr3e-4", 2)]["score"] == 80.0
    chosen = cv.choose(cands)
    assert (chosen["t3d"]["lr"], chosen["t3d"]["epoch"], chosen["t3d"]["score"]) == ("lr1e-3", 1, 170.0)
    assert (chosen["naive"]["lr"], chosen["naive"]["epoch"], chosen["naive"]["kept_full_step"]) == ("lr3e-4", 1, False)
    assert cv.candidate_of("path_only_lr3e-4_step64_dynamic", 32, 3) == ("path_only", "lr3e-4", 2)
    assert cv.candidate_of("base", 32, 3) is None


def test_several_reference_methods_each_pair_once(tmp_path):
    """reference_method may list methods: each is compared with every other method (a pair once), the goal is
    checked for the first."""
    spec = rx.load_experiment(ROOT / "configs/experiments/study_chain_v3.yaml")
    spec.update(out=str(tmp_path / "out"))
    exp_file = tmp_path / "e.yaml"
    exp_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    exp = rx.Experiment(rx.parse_args(["--experiment", str(exp_file)]))
    assert exp.references() == ["t3d_lr1e-3", "t3d_sum_lr3e-4"]
    summary = dict.fromkeys(["base", "t3d_lr1e-3", "t3d_sum_lr3e-4", "naive_lr3e-4"])
    pairs = exp.pairs(summary)
    assert pairs == [("t3d_lr1e-3", "base"), ("t3d_sum_lr3e-4", "base"), ("naive_lr3e-4", "base"),
                     ("t3d_lr1e-3", "t3d_sum_lr3e-4"), ("t3d_lr1e-3", "naive_lr3e-4"),
                     ("t3d_sum_lr3e-4", "naive_lr3e-4")]

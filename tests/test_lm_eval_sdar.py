"""The lm-evaluation-harness model `sdar_bd` (t3d.integrations.lm_eval): same prompts, outputs, accuracy and
decoding cost as eval.py on the shipped smoke items; stop strings, max_gen_toks, seeds and refusals."""
import json
import re
import subprocess
import sys

import pytest
import torch
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

from t3d.integrations.lm_eval import MODEL_ARGS, SDARBlockDiffusionLM, main
from t3d.common.paths import CHECKOUT as REPO_ROOT
from t3d.common.config import ConfigError, load_config
from t3d.eval.evaluate import run_eval_job
from t3d.common.io import DataError

TASK = "t3d_synthetic_math_smoke"
TASKS_DIR = REPO_ROOT / "t3d" / "integrations" / "lm_eval_tasks"
SMOKE = REPO_ROOT / "data" / "synthetic_math_smoke.json"
TINY = "models/sdar-tiny"
QUESTION = "Compute 90+41.\nPlease reason step by step, and put your final answer within \\boxed{}."


@pytest.fixture(scope="module")
def task_manager():
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@pytest.fixture(scope="module")
def lm():
    return SDARBlockDiffusionLM(pretrained=TINY, block_size=4, denoising_steps=4)


def eval_py(tmp_path, steps, *overrides):
    """eval.py's evaluation of the smoke items: (metrics row, items.jsonl records)."""
    cfg = load_config([f"config={REPO_ROOT}/configs/eval.yaml", f"evaluation.checkpoint_path={TINY}",
                       f"evaluation.eval_dataset={SMOKE}", f"experiment.output_dir={tmp_path}/eval_py",
                       "rollout.block_size=4", f"rollout.denoising_steps_per_block={steps}", "rollout.max_token=64",
                       "rollout.temperature=0", *overrides])
    row = run_eval_job(cfg)[0]
    [items] = (tmp_path / "eval_py").rglob("items.jsonl")  # wherever eval.py's layout puts it
    return row, [json.loads(line) for line in items.read_text().splitlines()]


def without_stop_token(text):
    """eval.py keeps the stop token that ended a response; lm-eval's text ends before it."""
    return re.sub(r"(<\|im_end\|>|<\|endoftext\|>)$", "", text)


def lm_eval_run(task_manager, steps, batch_size=3, gen_kwargs=None, **model_args):
    results = simple_evaluate(
        model="sdar_bd", model_args={"pretrained": TINY, "block_size": 4, "denoising_steps": steps, **model_args},
        tasks=[TASK], task_manager=task_manager, apply_chat_template=True, batch_size=batch_size,
        gen_kwargs=gen_kwargs, log_samples=True, bootstrap_iters=0)
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    return results, samples


@pytest.mark.parametrize("steps", [4, 1])
def test_accuracy_cost_prompts_and_outputs_equal_eval_py(tmp_path, task_manager, steps):
    row, records = eval_py(tmp_path, steps)
    results, samples = lm_eval_run(task_manager, steps)  # batches of 3: eval.py decodes all 16 at once
    assert results["results"][TASK]["accuracy,none"] == pytest.approx(row["accuracy"], abs=1e-12)
    assert len(samples) == row["items"] == 16
    assert [s["arguments"][0][0] for s in samples] == [r["prompt"] for r in records]
    assert [s["resps"][0][0] for s in samples] == [without_stop_token(r["output"]) for r in records]
    cost = results["config"]["sdar_cost"]["tasks"][TASK]
    for key in ("mean_nfe", "tokens_per_forward", "mean_response_length"):
        assert cost[key] == pytest.approx(row[key], abs=1e-12), key
    assert cost["sequences"] == 16 and cost["generated_tokens"] == sum(r["length"] for r in records)
    assert cost["nfe"] == sum(r["nfe"] for r in records) and cost["stopped_by_until"] == 0
    assert cost["settings"] == [{"max_gen_toks": 64, "temperature": 0.0, "top_k": 0, "top_p": 1.0}]
    assert results["config"]["sdar_cost"]["decoding"]["steps_per_block"] == steps


def test_sampling_seed_feeds_the_decoder(tmp_path, task_manager):
    """T > 0: lm-eval's sequence seeds are eval.py's (item index), so the samples are equal; another seed differs."""
    row, records = eval_py(tmp_path, 2, "rollout.temperature=1.0", "rollout.seed=3")
    sampled = {"do_sample": True, "temperature": 1.0}
    _, samples = lm_eval_run(task_manager, 2, gen_kwargs=sampled, seed=3)
    outputs = [s["resps"][0][0] for s in samples]
    assert outputs == [without_stop_token(r["output"]) for r in records]
    _, other = lm_eval_run(task_manager, 2, gen_kwargs=sampled, seed=4)
    assert sum(s["resps"][0][0] != out for s, out in zip(other, outputs)) >= 4


def request(lm, gen_kwargs, doc_id=0, context=None):
    context = context or lm.apply_chat_template([{"role": "user", "content": QUESTION}])
    return Instance("generate_until", {}, (context, gen_kwargs), 0, ("toy", doc_id, 1))


def test_until_max_gen_toks_and_their_cost(lm):
    lm._records.clear()
    outs = lm.generate_until([request(lm, {"until": []}), request(lm, {"until": ["="]}),
                              request(lm, {"until": ["boxed", "1="]}), request(lm, {"until": [], "max_gen_toks": 5})],
                             disable_tqdm=True)
    assert outs == ["40+91=131. \\boxed{131}", "40+91", "40+9", "40+91"]
    # (tokens, NFE, finished, stopped by until): "=" and "boxed" are single tokens, so decoding ends at them
    # (NFE: the prefill + 4 steps per block); "1=" is two tokens and only cuts the text
    assert [(r["tokens"], r["nfe"], r["finished"], r["stopped_by_until"]) for r in lm._records] == [
        (18, 21, True, False), (6, 9, True, True), (12, 13, True, True), (5, 9, False, False)]
    total = lm.cost_report()["tasks"]["toy"]
    assert (total["generated_tokens"], total["nfe"], total["stopped_by_until"]) == (41, 52, 2)
    assert total["tokens_per_forward"] == pytest.approx(41 / 52)


def test_batching_does_not_change_outputs(lm):
    reqs = [request(lm, {"until": [], "do_sample": True, "temperature": 1.0, "max_gen_toks": 24}, doc_id=d)
            for d in range(5)]
    lm.batch_size = 1
    threads = torch.get_num_threads()
    one_by_one = lm.generate_until(reqs, disable_tqdm=True)  # on 1 CPU thread (num_threads=1), then restored
    assert torch.get_num_threads() == threads
    lm.batch_size = 5
    assert lm.generate_until(reqs, disable_tqdm=True) == one_by_one
    assert len(set(one_by_one)) > 1  # per-document seeds: not five copies of one sample


def test_refusals_are_clear(lm, caplog):
    with pytest.raises(NotImplementedError, match="generation tasks"):
        lm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="generation tasks"):
        lm.loglikelihood_rolling([])
    with pytest.raises(ConfigError, match="unknown key 'steps'; expected one of pretrained"):
        SDARBlockDiffusionLM(pretrained=TINY, steps=1)
    with pytest.raises(ConfigError, match="remasking_strategy 'greedy'"):
        SDARBlockDiffusionLM(pretrained=TINY, remasking="greedy")
    with pytest.raises(ConfigError, match="--batch_size must be a positive integer or 'auto', got 0"):
        SDARBlockDiffusionLM(pretrained=TINY, batch_size=0)
    with pytest.raises(ConfigError, match="generation kwarg 'num_beams' is not supported"):
        lm.generate_until([request(lm, {"until": [], "num_beams": 4})])
    with pytest.raises(DataError, match=r"toy doc 7: prompt of \d+ tokens \+ max_gen_toks 100000 exceeds"):
        lm.generate_until([request(lm, {"until": [], "max_gen_toks": 100000}, doc_id=7)])
    fresh = SDARBlockDiffusionLM(pretrained=TINY, temperature=0.5)
    with caplog.at_level("WARNING"):
        fresh.generate_until([request(fresh, {"until": [], "max_gen_toks": 4}, context="Compute 1+2.")],
                             disable_tqdm=True)
    assert "NOT chat-templated" in caplog.text
    # model_args temperature: the default of requests without sampling settings; a task's do_sample=False wins, loudly
    assert fresh._request_settings({"until": []})[0].temperature == 0.5
    assert fresh._request_settings({"until": [], "do_sample": False, "temperature": 0.5})[0].temperature == 0.0
    assert "override model_args temperature=0.5" in caplog.text


def launch(*args, cwd):
    return subprocess.run([sys.executable, "-m", "t3d.integrations.lm_eval", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(REPO_ROOT)})


@pytest.mark.slow
def test_cli_launcher_writes_results_and_cost_beside_them(tmp_path):
    row, _ = eval_py(tmp_path, 1)
    args = ["--model", "sdar_bd", "--model_args", f"pretrained={TINY},block_size=4,denoising_steps=1",
            "--tasks", TASK, "--include_path", str(TASKS_DIR), "--apply_chat_template", "--batch_size", "8"]
    proc = launch(*args, "--output_path", str(tmp_path / "out"), cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [results_file] = (tmp_path / "out").glob("*/results_*.json")
    [cost_file] = results_file.parent.glob("sdar_cost_*.json")
    assert cost_file.name == results_file.name.replace("results_", "sdar_cost_")
    results, cost = json.loads(results_file.read_text()), json.loads(cost_file.read_text())
    assert results["results"][TASK]["accuracy,none"] == pytest.approx(row["accuracy"], abs=1e-12)
    assert cost["tasks"] == results["config"]["sdar_cost"]["tasks"]
    assert cost["tasks"][TASK]["tokens_per_forward"] == pytest.approx(row["tokens_per_forward"], abs=1e-12)
    assert f"| {TASK} | 16 |" in proc.stdout and str(cost_file) in proc.stdout


@pytest.mark.slow  # lm-eval's CLI indexes its ~10,000 task files first
def test_launcher_error_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # main() hands its arguments to lm-eval's CLI through sys.argv
    monkeypatch.delenv("T3D_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "sdar_bd", "--model_args", f"pretrained={TINY},steps=1", "--tasks", TASK, "--include_path",
              str(TASKS_DIR), "--output_path", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == ("lm_eval_sdar: error: sdar_bd model_args: unknown key 'steps'; expected "
                                            "one of " + ", ".join(MODEL_ARGS))
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_math500_task_reads_the_toolkit_dataset(task_manager):
    """t3d_math500 = the smoke task's prompt and grader over data/MATH500.json (2,000 new tokens)."""
    if not (REPO_ROOT / "data" / "MATH500.json").is_file():
        with pytest.raises(DataError, match=r"dataset 'MATH500': no file .*download_data.py --dataset MATH500"):
            task_manager.load(["t3d_math500"])
        return
    task = task_manager.load(["t3d_math500"])["tasks"]["t3d_math500"]
    assert len(task.test_docs()) == 500 and task.config.generation_kwargs["max_gen_toks"] == 2000

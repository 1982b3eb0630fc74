"""The README's chain at SDAR-4B-Chat's real shape (1 layer of random bf16 weights, the real tokenizer, chat
template and sharded safetensors; tests/release_checkpoint.py), through the commands a user runs: rollout
(sample/sdar_sample.py), preprocess (data/rename_key.py), one LoRA T3D step (train/self_ddo_sdar_full.py), eval.py
on the base and the adapter at S=4 and S=1, and the lm-eval model `sdar_bd` on the adapter. All in bf16, B=4,
8 new tokens. Full (non-LoRA) T3D is left out: one step at this shape peaks at 18.5 GB (17.6 GiB) resident on the
host (fp32 master weights, gradients and AdamW for 0.88 B parameters)."""
import json
import math
import os
import subprocess
import sys

import pytest
import yaml
from safetensors import safe_open

from t3d.common.paths import CHECKOUT as REPO
from tests.release_checkpoint import ckpt  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}
QUESTIONS = [{"question": "Compute 47+38.", "ground_truth_answer": "85"},
             {"question": "What is 6*7?", "ground_truth_answer": "42"}]
B, MAX_TOKEN, VOCAB, MASK, STOPS = 4, 8, 151936, 151669, (151643, 151645)
LORA_PARAMS = 8 * (2 * (2560 + 4096) + 2 * (2560 + 1024) + 3 * (2560 + 9728))  # r x (in + out), 7 linears
TASKS_DIR = REPO / "t3d" / "integrations" / "lm_eval_tasks"


def run(*args):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def expected_nfe(prompt_len, length, steps):
    """1 prefill + the forwards of each block the response touches (blocks sit at absolute positions, so the
    prompt's tail shares the first): S=B unmasks one token per forward, S=1 a whole block."""
    tail = prompt_len % B
    blocks = -(-(tail + length) // B)
    return 1 + (blocks * B - tail if steps == B else blocks)


def prompt_len(tokenizer, prompt):
    from t3d.tasks.prompting import encode_prompt

    return len(encode_prompt(tokenizer, prompt))


@pytest.fixture(scope="module")
def tokenizer(ckpt):
    from t3d.model.checkpoint import load_tokenizer

    return load_tokenizer(str(ckpt))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    out = tmp_path_factory.mktemp("release-chain")
    (out / "questions.json").write_text(json.dumps(QUESTIONS))
    return out


@pytest.fixture(scope="module")
def rollout(ckpt, work):
    stdout = run("sample/sdar_sample.py", "config=configs/sdar_sample.yaml", f"evaluation.checkpoint_path={ckpt}",
                 f"evaluation.eval_dataset={work / 'questions.json'}", f"experiment.output_dir={work}",
                 f"rollout.block_size={B}", "rollout.denoising_steps_per_block=4", f"rollout.max_token={MAX_TOKEN}",
                 "rollout.seed=0", "rollout.dtype=bf16")
    return work / "sdar_sample" / "temp_data" / f"outputs-eval-{ckpt.name}-questions.json", stdout


@pytest.fixture(scope="module")
def records(rollout, work):
    stdout = run("data/rename_key.py", "--input", rollout[0], "--output", work / "records.json")
    assert "kept 2 records from 2 items; dropped 0" in stdout
    return json.loads((work / "records.json").read_text())


@pytest.fixture(scope="module")
def trained(ckpt, records, work):
    stdout = run("train/self_ddo_sdar_full.py", "config=configs/ddo_sdar_full_self.yaml",
                 f"model.pretrained_model={ckpt}", f"dataset.optimization_data={work / 'records.json'}",
                 f"experiment.output_dir={work / 'exp'}", "experiment.start_from_scratch=true", "model.lora.r=8",
                 "training.mixed_precision=bf16", "training.num_train_epochs=1", "training.batch_size_lm=2",
                 "training.gradient_accumulation_steps=1", "training.num_threads=1")
    return work / "exp" / "ddo_sdar_full_self", stdout


@pytest.fixture(scope="module")
def evaluated(ckpt, trained, work):
    adapter = trained[0] / "ckpt" / "optimized"
    run("eval.py", "config=configs/eval.yaml", f"sweep.checkpoints=[base={ckpt},t3d={adapter}]",
        "sweep.denoising_steps=[4,1]", f"evaluation.eval_dataset={work / 'questions.json'}",
        f"experiment.output_dir={work}", f"rollout.block_size={B}", f"rollout.max_token={MAX_TOKEN}",
        "rollout.dtype=bf16")
    results = {}
    for metrics in (work / "eval" / "results").glob("*/questions-*/*/metrics.json"):
        row = json.loads(metrics.read_text())
        items = [json.loads(line) for line in (metrics.parent / "items.jsonl").read_text().splitlines()]
        results[row["checkpoint"], row["denoising_steps_per_block"]] = row, items
    return results


def test_rollout_applies_the_chat_template_and_records_trajectories(rollout, tokenizer):
    path, stdout = rollout
    items = json.loads(path.read_text())
    assert [it["question"] for it in items] == [q["question"] for q in QUESTIONS]
    assert "model: bf16, attention sdpa" in stdout
    assert json.loads(path.with_name(path.name + ".inputs").read_text())["rollout.dtype"] == "bfloat16"
    snapshot = yaml.safe_load(path.with_name(path.stem + ".config.yaml").read_text())["rollout"]
    assert (snapshot["attn_implementation"], snapshot["dtype"]) == ("sdpa", "bf16")  # the kernel that ran
    for it in items:
        assert it["prompt"].startswith(f"<|im_start|>user\n{it['question']}")
        assert it["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert (it["block_size"], it["denoising_steps_per_block"]) == (B, 4)
        [ids], [steps], [nfe], [finished] = it["response_ids"], it["step_map"], it["nfe"], it["finished"]
        assert len(ids) == len(steps) == it["response_length"][0]
        assert (ids[-1] in STOPS) if finished else len(ids) == MAX_TOKEN
        assert all(0 <= i < VOCAB and i != MASK for i in ids) and tokenizer.decode(ids) == it["full_output"][0]
        # step_map: the per-sequence step (1-based, across blocks) that unmasked each token; with S=B one token
        # per step, so distinct steps, each inside its block's range, and one forward per step after the prefill
        n = prompt_len(tokenizer, it["prompt"])
        tail = n % B
        assert len(set(steps)) == len(steps)
        for j, step in enumerate(steps):
            k = (tail + j) // B  # the response's k-th block
            assert max(0, k * B - tail) < step <= (k + 1) * B - tail
        assert it["prefill_nfe"] == [1] and nfe == expected_nfe(n, len(ids), 4)


def test_preprocess_keeps_the_trajectories(rollout, records):
    items = json.loads(rollout[0].read_text())
    assert [(r["source_index"], r["replica"]) for r in records] == [(0, 0), (1, 0)]
    for rec, it in zip(records, items):
        assert (rec["prompt"], rec["answer"]) == (it["prompt"], it["full_output"][0])
        assert (rec["response_ids"], rec["step_map"]) == (it["response_ids"][0], it["step_map"][0])


def test_lora_t3d_step_saves_a_bf16_adapter_of_the_release(ckpt, trained):
    run_dir, stdout = trained
    adapter = run_dir / "ckpt" / "optimized"
    assert f"LoRA: {LORA_PARAMS / 1e6:.3f}M trainable adapter parameters" in stdout and "attention: sdpa" in stdout
    assert not (adapter / "model.safetensors").exists()  # the adapter, not a copy of the base
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["r"]) == (str(ckpt), 8)
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # save_dtype auto under bf16
        assert sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()) == LORA_PARAMS
        assert all(".layers.0." in k for k in f.keys())
    run_config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (run_config["model"]["attn_implementation"], run_config["training"]["mixed_precision"]) == ("sdpa", "bf16")
    [step] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert step["step"] == 1 and math.isfinite(step["loss"]) and step["grad_norm"] > 0
    # lora_B starts at zero: the first step's target is its reference exactly, so both DDO terms are log 2
    assert step["ddo_real"] == step["ddo_fake"] == pytest.approx(math.log(2), rel=1e-6)


def test_eval_rows_on_base_and_adapter(evaluated, rollout, trained, tokenizer, ckpt):
    assert set(evaluated) == {("base", 4), ("base", 1), ("t3d", 4), ("t3d", 1)}
    for (label, steps), (row, items) in evaluated.items():
        assert row["checkpoint_path"] == str(ckpt if label == "base" else trained[0] / "ckpt" / "optimized")
        assert (row["items"], row["model_dtype"], row["attn_implementation"]) == (2, "bfloat16", "sdpa")
        assert 0 <= row["accuracy"] <= 1 and row["accuracy"] == sum(it["correct"] for it in items) / 2
        nfes = [expected_nfe(prompt_len(tokenizer, it["prompt"]), it["length"], steps) for it in items]
        assert [it["nfe"] for it in items] == nfes and row["mean_nfe"] == sum(nfes) / 2
        assert row["tokens_per_forward"] == pytest.approx(sum(it["length"] for it in items) / sum(nfes), rel=1e-12)
    # eval.py decodes as the rollout did: same tokens and trajectories from the same weights and settings
    rolled = json.loads(rollout[0].read_text())
    assert [it["response_ids"] for it in evaluated["base", 4][1]] == [it["response_ids"][0] for it in rolled]
    assert [it["step_map"] for it in evaluated["base", 4][1]] == [it["step_map"][0] for it in rolled]


def test_lm_eval_sdar_bd_on_the_adapter_equals_eval_py(evaluated, trained, work):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    import t3d.integrations.lm_eval  # noqa: F401  (registers sdar_bd)

    tasks = work / "lm_eval_tasks"
    tasks.mkdir()
    (tasks / "release_chain.yaml").write_text(yaml.safe_dump({
        "include": str(TASKS_DIR / "t3d_synthetic_math_smoke.yaml"), "task": "t3d_release_chain",
        "dataset_kwargs": {"dataset": str(work / "questions.json")},
        "generation_kwargs": {"until": [], "do_sample": True, "temperature": 0.1, "max_gen_toks": MAX_TOKEN}}))
    adapter = trained[0] / "ckpt" / "optimized"
    results = simple_evaluate(
        model="sdar_bd", model_args={"pretrained": str(adapter), "block_size": B, "denoising_steps": 1, "seed": 0,
                                     "dtype": "bf16"},
        tasks=["t3d_release_chain"], task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        apply_chat_template=True, batch_size=2, log_samples=True, bootstrap_iters=0)
    row, items = evaluated["t3d", 1]
    samples = sorted(results["samples"]["t3d_release_chain"], key=lambda s: s["doc_id"])
    assert [s["arguments"][0][0] for s in samples] == [it["prompt"] for it in items]  # the real chat template
    assert [s["resps"][0][0] for s in samples] == [
        it["output"].removesuffix("<|im_end|>").removesuffix("<|endoftext|>") for it in items]
    assert results["results"]["t3d_release_chain"]["accuracy,none"] == row["accuracy"]
    cost = results["config"]["sdar_cost"]
    assert (cost["checkpoint"], cost["dtype"], cost["attn_implementation"]) == (str(adapter), "bf16", "sdpa")
    task_cost = cost["tasks"]["t3d_release_chain"]
    assert (task_cost["sequences"], task_cost["nfe"]) == (2, sum(it["nfe"] for it in items))
    assert task_cost["tokens_per_forward"] == pytest.approx(row["tokens_per_forward"], rel=1e-12)

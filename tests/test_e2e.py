"""End-to-end: the quickstart pipeline (rollout -> rename_key -> T3D -> eval) on a small slice, through the
real command-line tools, checking every stage's output. Slow (a few minutes on 2 CPU cores)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    cmd = [sys.executable, str(ROOT / "scripts" / "quickstart.py"), "--out", str(out), "--rollout-questions", "12",
           "--eval-questions", "8", "--epochs", "1", "--steps", "4,1", "--test-data", str(ROOT / "data" / "synthetic_math_smoke.json")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


pytestmark = pytest.mark.slow


def test_rollout_file_schema(run):
    out, _ = run
    files = list((out / "sdar_sample" / "temp_data").glob("outputs-eval-sdar-tiny-quickstart_train.json"))
    assert len(files) == 1
    items = json.loads(files[0].read_text())
    questions = json.loads((out / "data" / "quickstart_train.json").read_text())
    assert [it["question"] for it in items] == [q["question"] for q in questions]
    from t3d.model.checkpoint import load_tokenizer
    from t3d.tasks.prompting import encode_prompt

    tokenizer = load_tokenizer(str(ROOT / "models" / "sdar-tiny"))
    for it in items:
        assert "error" not in it
        assert isinstance(it["prompt"], str) and it["prompt"].endswith("assistant\n")
        for key in ("full_output", "response_ids", "step_map", "extracted_output", "nfe", "finished"):
            assert isinstance(it[key], list) and len(it[key]) == 1, key  # one replica
        ids, steps = it["response_ids"][0], it["step_map"][0]
        assert len(ids) == len(steps) and 0 < len(ids) <= 64
        assert tokenizer.decode(ids) == it["full_output"][0]
        # S = B = 4 unmasks one token per step: 1-based steps, all distinct, and every absolute-position
        # block is decoded after the previous one
        assert min(steps) >= 1 and len(set(steps)) == len(steps)
        start = len(encode_prompt(tokenizer, it["prompt"]))
        blocks = {}
        for pos, step in enumerate(steps, start=start):
            blocks.setdefault(pos // 4, []).append(step)
        spans = [blocks[b] for b in sorted(blocks)]
        assert all(max(a) < min(b) for a, b in zip(spans, spans[1:]))


def test_renamed_records(run):
    out, _ = run
    records = json.loads((out / "data" / "sdar-tiny-quickstart_train_renamed.json").read_text())
    assert len(records) == 12
    for i, rec in enumerate(records):
        assert {"question", "prompt", "answer", "response_ids", "step_map", "source_index", "replica"} <= set(rec)
        assert rec["source_index"] == i and rec["replica"] == 0
        assert len(rec["response_ids"]) == len(rec["step_map"])
        assert rec["prompt"].endswith("<|im_start|>assistant\n")


def test_t3d_checkpoint_loads_and_runs(run):
    import torch

    from t3d.model.checkpoint import load

    out, _ = run
    ckpt = out / "t3d" / "ckpt" / "optimized"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.yaml").is_file()
    model, tokenizer, _ = load(str(ckpt))
    assert model.config.block_size == 4 and tokenizer.mask_token == "<|MASK|>"
    ids = torch.tensor([[1, 5, 6, 3]])
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(4)[None]).logits
    assert logits.shape == (1, 4, len(tokenizer)) and torch.isfinite(logits).all()
    metrics = [json.loads(line) for line in (out / "t3d" / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(m["loss"] == m["loss"] for m in metrics)  # finite, logged every step


def test_eval_metrics_and_table(run):
    out, stdout = run
    results = out / "eval" / "results"
    (sweep,) = results.glob("sweep-quickstart_test-*")  # keyed by its member results
    rows = json.loads((sweep / "sweep.json").read_text())["rows"]
    assert {(r["checkpoint"], r["denoising_steps_per_block"]) for r in rows} == {("base", 4), ("base", 1), ("t3d", 4), ("t3d", 1)}
    for r in rows:
        assert r["items"] == 8 and 0.0 <= r["accuracy"] <= 1.0
        (setting,) = results.glob(f"{r['checkpoint']}-*/quickstart_test-*/B4-S{r['denoising_steps_per_block']}-*")
        metrics = json.loads((setting / "metrics.json").read_text())  # results are keyed by their settings
        assert metrics["accuracy"] == r["accuracy"]
    # S=1 decodes whole blocks: about 4 tokens per forward; S=4 about 1 (prefill adds a forward each)
    by = {(r["checkpoint"], r["denoising_steps_per_block"]): r["tokens_per_forward"] for r in rows}
    assert by["base", 1] > 2.5 * by["base", 4]
    # the shipped models/sdar-tiny is the trained one: it solves the task at full steps (99% on the test split)
    accuracy = {(r["checkpoint"], r["denoising_steps_per_block"]): r["accuracy"] for r in rows}
    assert accuracy["base", 4] >= 7 / 8
    assert (sweep / "sweep.png").stat().st_size > 1000
    assert "| base |" in stdout and "| t3d |" in stdout and "S=1 acc" in stdout


def test_quickstart_shows_each_stage_while_it_runs(run):
    _, stdout = run  # each command's own output streams through (the rollout summary, the records, the save)
    assert '"sequences": 12' in stdout and "kept 12 records from 12 items" in stdout
    assert "saved " in stdout and "[eval] done in" in stdout

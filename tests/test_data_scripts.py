"""data/rename_key.py, data/download_data.py, data/synthetic_math.py and accelerate_configs/*.yaml."""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
CONFIGS = REPO / "accelerate_configs"


# the code behind data/rename_key.py, data/download_data.py and data/synthetic_math.py
from t3d.tasks import download as download_data  # noqa: E402
from t3d.tasks import synthetic_math  # noqa: E402
from t3d.train import records as rename_key  # noqa: E402


# ---------------------------------------------------------------- rename_key

ROLLOUT = [
    {"question": "Q0", "ground_truth_answer": "5", "answer": "dataset answer", "prompt": "P0",
     "full_output": ["a0", "a1"], "response_ids": [[11, 12, 13], [14, 15]], "step_map": [[1, 3, 2], [1]],
     "extracted_output": ["5", "6"], "response_length": [3, 2], "nfe": [4, 3], "finished": [True, False]},
    {"question": "Q1", "prompt": "P1", "full_output": ["b0", "b1"], "response_ids": [[7], [8, 9]],
     "step_map": [[1], [2, 2]]},
]
EXPECTED = [
    {"question": "Q0", "prompt": "P0", "answer": "a0", "response_ids": [11, 12, 13], "step_map": [1, 3, 2],
     "source_index": 0, "replica": 0, "ground_truth_answer": "5", "original_answer": "dataset answer",
     "extracted_output": "5", "response_length": 3, "nfe": 4, "finished": True},
    {"question": "Q1", "prompt": "P1", "answer": "b0", "response_ids": [7], "step_map": [1],
     "source_index": 1, "replica": 0},
    {"question": "Q1", "prompt": "P1", "answer": "b1", "response_ids": [8, 9], "step_map": [2, 2],
     "source_index": 1, "replica": 1},
]


def test_rename_key_one_record_per_replica_and_counted_drop(tmp_path, capsys):
    src = tmp_path / "m-d.json"
    src.write_text(json.dumps(ROLLOUT))
    assert rename_key.main(["--input", str(src)]) == 0
    out = capsys.readouterr().out
    assert "kept 3 records from 2 items; dropped 1: step_map length != response_ids length: 1" in out
    assert json.loads((tmp_path / "m-d_renamed.json").read_text()) == EXPECTED


def test_rename_key_default_paths_follow_the_script_folder(tmp_path, monkeypatch, capsys):
    assert rename_key.DATA_DIR == DATA
    monkeypatch.setattr(rename_key, "DATA_DIR", tmp_path)
    monkeypatch.chdir(REPO)  # any CWD: the default names do not depend on it
    (tmp_path / "SDAR-4B-Chat-MATH_train.json").write_text(json.dumps(ROLLOUT))
    assert rename_key.main(["--model_name", "SDAR-4B-Chat", "--dataset", "MATH_train"]) == 0
    assert json.loads((tmp_path / "SDAR-4B-Chat-MATH_train_renamed.json").read_text()) == EXPECTED


def test_rename_key_jsonl_and_merged_shards(tmp_path):
    a, b, out = tmp_path / "s0.jsonl", tmp_path / "s1.json", tmp_path / "merged.json"
    a.write_text("".join(json.dumps(x) + "\n" for x in ROLLOUT))
    b.write_text(json.dumps([ROLLOUT[1]]))
    assert rename_key.main(["--input", str(a), "--input", str(b), "--output", str(out)]) == 0
    records = json.loads(out.read_text())
    assert records[:3] == EXPECTED
    assert [(r["source_index"], r["replica"]) for r in records[3:]] == [(2, 0), (2, 1)]


def test_rename_key_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    assert rename_key.main(["--input", str(missing)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"rename_key.py: error: {missing}: file not found"


def test_rename_key_empty_result_is_an_error_and_writes_nothing(tmp_path, capsys):
    src, out = tmp_path / "r.json", tmp_path / "out.json"
    bad = [{"question": "", "prompt": "P", "full_output": ["x"], "response_ids": [[1]], "step_map": [[1]]},
           {"question": "Q", "prompt": "P", "full_output": ["x"], "response_ids": [[1, 2]], "step_map": ""},
           {"question": "Q", "prompt": "P", "full_output": ["x", "y"]}]  # no token ids at all
    src.write_text(json.dumps(bad))
    assert rename_key.main(["--input", str(src), "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rename_key.py: error: {src}: no valid training records (kept 0 records from 3 items; dropped 4: "
                   "response_ids missing, empty or not ints: 2, question missing or empty: 1, "
                   "step_map missing or not ints: 1)"]
    assert list(tmp_path.iterdir()) == [src]  # no output, no temp file


def test_rename_key_strict_names_item_and_replica(tmp_path, capsys):
    src = tmp_path / "r.json"
    src.write_text(json.dumps(ROLLOUT))
    assert rename_key.main(["--input", str(src), "--strict"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"rename_key.py: error: {src}: item 0 replica 1: step_map length != response_ids length")


@pytest.mark.parametrize("text, message", [
    ('[{"question": "Q"}, 3]', "item 1 is a int, expected an object"),
    ('[{"question": "Q"', "malformed JSON/JSONL at line 1"),
])
def test_rename_key_malformed_input(tmp_path, capsys, text, message):
    src = tmp_path / "r.json"
    src.write_text(text)
    assert rename_key.main(["--input", str(src)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rename_key.py: error: {src}: {message}") and "\n" not in err


def test_rename_key_copies_rollout_settings_and_drops_impossible_step_maps(tmp_path, capsys):
    settings = {"block_size": 4, "denoising_steps_per_block": 2, "remasking_strategy": "low_confidence_static"}
    # 5 tokens span at most ceil((5 + 3) / 4) = 2 blocks -> steps 1..4 possible
    items = [{"question": "Q0", "prompt": "P0", "full_output": ["a", "b", "c"], **settings,
              "response_ids": [[1, 2, 3, 4, 5]] * 3, "step_map": [[1, 1, 2, 3, 4], [0, 1, 2, 3, 4], [1, 1, 2, 3, 5]]}]
    src, out = tmp_path / "r.json", tmp_path / "out.json"
    src.write_text(json.dumps(items))
    assert rename_key.main(["--input", str(src), "--output", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "kept 1 records from 1 items; dropped 2: step_map value < 1: 1, step_map value > the steps its blocks allow: 1")
    (record,) = json.loads(out.read_text())
    assert {k: record[k] for k in settings} == settings and record["step_map"] == [1, 1, 2, 3, 4]
    assert rename_key.main(["--input", str(src), "--output", str(out), "--strict"]) == 1
    assert capsys.readouterr().err.strip() == f"rename_key.py: error: {src}: item 0 replica 1: step_map value < 1"
    # without the settings (older rollouts) only >= 1 is checked
    for key in settings:
        items[0].pop(key)
    src.write_text(json.dumps(items))
    assert rename_key.main(["--input", str(src), "--output", str(out)]) == 0
    assert [r["replica"] for r in json.loads(out.read_text())] == [0, 2]


# ---------------------------------------------------------------- synthetic_math

def test_synthetic_items_are_deterministic_and_prefix_stable():
    first = synthetic_math.make_items(200, 7, "train")
    assert first == synthetic_math.make_items(200, 7, "train")
    assert first[:50] == synthetic_math.make_items(50, 7, "train")
    assert first != synthetic_math.make_items(200, 8, "train")


def test_synthetic_splits_are_disjoint_up_to_operand_order():
    pools = {split: set(synthetic_math.problem_pool(split)) for split in synthetic_math.SPLITS}
    assert sum(map(len, pools.values())) == 90 * 91 // 2  # every unordered pair of 10..99, once
    assert not (pools["train"] & pools["val"] or pools["train"] & pools["test"] or pools["val"] & pools["test"])
    key = lambda it: tuple(sorted(it["operands"]))  # noqa: E731
    train = {key(it) for it in synthetic_math.make_items(20000, 0, "train")}
    assert train == pools["train"]  # train passes cycle through the whole pool
    for split, n in (("val", 400), ("test", 500)):
        held_out = [key(it) for seed in (0, 1) for it in synthetic_math.make_items(n, seed, split)]
        assert len(set(held_out[:n])) == n and set(held_out) <= pools[split]


def test_synthetic_train_cycles_with_fresh_draws():
    pool = synthetic_math.problem_pool("train")
    items = synthetic_math.make_items(2 * len(pool), 0, "train")
    first, second = items[:len(pool)], items[len(pool):]
    key = lambda it: tuple(sorted(it["operands"]))  # noqa: E731
    assert sorted(map(key, first)) == sorted(map(key, second)) == sorted(pool)  # each pass: every problem once
    assert [key(it) for it in first] != [key(it) for it in second]  # reshuffled


def test_synthetic_item_content():
    items = synthetic_math.make_items(300, 0, "test")
    assert {it["solution_style"] for it in items} == {0, 1, 2, 3}
    assert {it["question_style"] for it in items} == {0, 1, 2, 3}
    for it in items:
        a, b = it["operands"]
        assert it["ground_truth_answer"] == str(a + b) and all(str(x) in it["question"] for x in (a, b))
        assert it["solution"] == it["solutions"][it["solution_style"]]
        assert it["solutions"] == [f"{a}+{b}={a + b}. \\boxed{{{a + b}}}", f"{b}+{a}={a + b}. \\boxed{{{a + b}}}",
                                   f"The sum is {a + b}. \\boxed{{{a + b}}}",
                                   f"Adding {a} and {b} gives {a + b}. \\boxed{{{a + b}}}"]
        if a // 10 != b // 10:
            assert len({s[0] for s in it["solutions"]}) == 4  # phrasings differ at the first token


def test_synthetic_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="test pool holds"):
        synthetic_math.make_items(10 ** 6, 0, "test")
    with pytest.raises(ValueError, match="val pool holds"):
        synthetic_math.make_items(500, 0, "val")
    with pytest.raises(ValueError, match="split must be one of"):
        synthetic_math.make_items(1, 0, "dev")


def test_shipped_synthetic_files_match_the_generator():
    def read(name):
        return json.loads((DATA / name).read_text())
    test = read("synthetic_math_test.json")
    assert test == synthetic_math.make_items(500, 0, "test")
    assert read("synthetic_math_smoke.json") == test[:16]
    assert read("synthetic_math_val.json") == synthetic_math.make_items(400, 0, "val")
    assert read("synthetic_math_train.json") == synthetic_math.make_items(20000, 0, "train")


def test_synthetic_cli_writes_files(tmp_path):
    synthetic_math.main(["--seed", "3", "--train", "20", "--val", "4", "--test", "5", "--out_dir", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "synthetic_math_smoke.json", "synthetic_math_test.json", "synthetic_math_train.json", "synthetic_math_val.json"]
    assert json.loads((tmp_path / "synthetic_math_train.json").read_text()) == synthetic_math.make_items(20, 3, "train")
    assert json.loads((tmp_path / "synthetic_math_val.json").read_text()) == synthetic_math.make_items(4, 3, "val")
    assert json.loads((tmp_path / "synthetic_math_smoke.json").read_text()) == synthetic_math.make_items(5, 3, "test")


# ---------------------------------------------------------------- download_data

HUB_HINT = "; save it with data/download_data.py on a machine with network, or pass a local .json/.jsonl/.parquet/.csv file"


def test_download_offline_fails_fast_with_one_line_and_no_file(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, str(DATA / "download_data.py"), "--dataset", "MATH500", "--out_dir", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert line.startswith("download_data.py: error: could not fetch the hub dataset "
                           "hub:Gen-Verse/MATH500/test/MATH500.json (ConnectionError: ") and line.endswith(HUB_HINT), line
    assert list(out.iterdir()) == []


def test_download_locations_and_default_folder():
    assert download_data.DATA_DIR == DATA
    assert download_data.hub_location("MATH_train") == ("Gen-Verse/MATH_train", "train/MATH_train.json")
    assert download_data.hub_location("PrimeIntellect") == ("Gen-Verse/PrimeIntellect", "train/PrimeIntellect.json")
    for name in ("MATH500", "GSM8K", "MBPP", "HumanEval"):
        assert download_data.hub_location(name) == (f"Gen-Verse/{name}", f"test/{name}.json")


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """datasets.load_dataset of a hub id served from a local JSON file; returns the file to fill and the calls."""
    import datasets

    from t3d.tasks import loading

    served, calls, real = tmp_path / "served.json", [], datasets.load_dataset

    def fake_load(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return real("json", data_files=str(served), split=kwargs.get("split"), cache_dir=str(tmp_path / "cache"))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr(loading, "hub_reachable", lambda: True)
    return served, calls


def test_download_saves_a_valid_dataset_in_the_toolkit_schema(tmp_path, fake_hub, capsys):
    served, calls = fake_hub
    items = [{"question": "1+1?", "ground_truth_answer": "2", "tags": ["a"]}, {"question": "2+2?"}]
    served.write_text(json.dumps(items))
    out = tmp_path / "out"
    assert download_data.main(["--dataset", "GSM8K", "--out_dir", str(out)]) == 0
    assert json.loads((out / "GSM8K.json").read_text()) == items  # Arrow's null for the missing keys dropped
    assert calls == [("Gen-Verse/GSM8K", None, {"split": None, "data_files": "test/GSM8K.json"})]
    assert capsys.readouterr().out.strip() == \
        f"wrote {out / 'GSM8K.json'} (2 items from hub:Gen-Verse/GSM8K/test/GSM8K.json)"


@pytest.mark.parametrize("content, message", [
    ('[{"q": 1}]', "hub:Gen-Verse/MBPP/test/MBPP.json: item 0 has no string 'question' (columns: q); "
                   "map one with --columns question=<column>"),
    ("[]", "hub:Gen-Verse/MBPP/test/MBPP.json: dataset is empty"),
    ("[{", "hub dataset hub:Gen-Verse/MBPP/test/MBPP.json: cannot load ("),
])
def test_download_rejects_bad_content_and_keeps_old_file(tmp_path, fake_hub, capsys, content, message):
    served, _ = fake_hub
    served.write_text(content)
    (tmp_path / "MBPP.json").write_text("old")
    assert download_data.main(["--dataset", "MBPP", "--out_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"download_data.py: error: {message}") and err.count("\n") == 1, err
    assert (tmp_path / "MBPP.json").read_text() == "old"


def test_download_converts_a_gsm8k_style_parquet_with_columns_and_answer_format(tmp_path, capsys):
    import datasets

    rows = [{"question": "Tom has 3 apples and buys 1,000 more. How many?", "answer": "3+1000=1003\n#### 1,003"},
            {"question": "2+2?", "answer": "#### 4"}]
    source = tmp_path / "gsm8k-test.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(source))
    assert download_data.main(["--source", str(source), "--name", "gsm8k_test", "--columns",
                               "ground_truth_answer=answer", "--answer_format", "gsm8k", "--out_dir", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "gsm8k_test.json").read_text()) == [
        {**rows[0], "ground_truth_answer": "1003"}, {**rows[1], "ground_truth_answer": "4"}]
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'gsm8k_test.json'} (2 items from {source})"
    # a mapped column that is not there: one line listing the columns, nothing written
    assert download_data.main(["--source", str(source), "--name", "bad", "--columns", "question=problem",
                               "--out_dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (f"download_data.py: error: --columns.question: no column 'problem' in {source} "
                                       "(columns: question, answer)\n")
    assert not (tmp_path / "bad.json").exists()


# ---------------------------------------------------------------- accelerate configs

ALL_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml"))


def test_accelerate_config_set():
    expected = {f"1_node_{n}_gpus_deepspeed_zero{s}.yaml" for n in (1, 2, 4, 8) for s in (1, 2, 3)}
    expected |= {"1_node_6_gpus_deepspeed_zero1.yaml", "1_node_4_gpus.yaml", "1_node_8_gpus.yaml",
                 "2_nodes_8_gpus_deepspeed_zero1.yaml", "cpu_1_process.yaml", "cpu_2_processes_ddp.yaml",
                 "cpu_2_processes_deepspeed_zero1.yaml"}
    assert set(ALL_CONFIGS) == expected


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_accelerate_config_loads_and_matches_its_name(name):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(CONFIGS / name))  # rejects unknown keys
    raw = yaml.safe_load((CONFIGS / name).read_text())
    assert "gradient_accumulation_steps" not in json.dumps(raw)  # would override the training config
    m = re.match(r"(\d)_nodes?_(\d)_gpus(?:_deepspeed_zero(\d))?\.yaml$", name)
    if m:
        nodes, gpus, stage = int(m[1]), int(m[2]), m[3]
        assert (cfg.num_machines, cfg.num_processes, cfg.use_cpu) == (nodes, nodes * gpus, False)
        assert cfg.distributed_type.value == ("DEEPSPEED" if stage else "MULTI_GPU")
        if stage:
            assert cfg.deepspeed_config["zero_stage"] == int(stage)
    else:
        assert cfg.use_cpu and cfg.mixed_precision == "no"
        assert cfg.num_processes == (1 if name == "cpu_1_process.yaml" else 2)


LAUNCH_SCRIPT = """
import os
import torch
from accelerate import Accelerator, InitProcessGroupKwargs
no_cuda = not torch.cuda.is_available()
deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
# CPU: DDP needs cpu=True (accelerate then picks MULTI_CPU over gloo); DeepSpeed needs cpu=False plus an
# explicit gloo backend, else each rank runs alone (cpu=True would silently drop DeepSpeed).
acc = Accelerator(gradient_accumulation_steps=3, cpu=no_cuda and not deepspeed,
                  kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if no_cuda and deepspeed and multi else [])
if acc.state.deepspeed_plugin is not None:
    acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
torch.manual_seed(0)
model, opt = torch.nn.Linear(2, 1), None
opt = torch.optim.SGD(model.parameters(), lr=0.1)
model, opt = acc.prepare(model, opt)
acc.backward(model(torch.full((1, 2), float(acc.process_index + 1))).sum())
opt.step()
w = acc.unwrap_model(model).weight.detach().sum().item()
# one file per rank: the ranks' stdout lines can interleave with launcher/DeepSpeed logging
with open(f"result{acc.process_index}.txt", "w") as f:
    f.write(f"{acc.process_index} {acc.num_processes} {acc.distributed_type.value} "
            f"{acc.gradient_accumulation_steps} {acc.mixed_precision} {w:.6f}")
"""


@pytest.mark.slow
@pytest.mark.parametrize("name, n, kind", [
    ("cpu_1_process.yaml", 1, "NO"),
    ("cpu_2_processes_ddp.yaml", 2, "MULTI_CPU"),
    ("cpu_2_processes_deepspeed_zero1.yaml", 2, "DEEPSPEED"),
])
def test_cpu_config_launches(tmp_path, name, n, kind):
    with socket.socket() as sock:  # a free port: other jobs on the machine may hold accelerate's default
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = tmp_path / "tiny.py"
    script.write_text(LAUNCH_SCRIPT)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for _attempt in range(2):  # one retry: a loaded 2-core machine can lose a rank's rendezvous or output
        proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / name),
                               "--main_process_port", str(port), str(script)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        results = sorted(p.read_text().split() for p in tmp_path.glob("result*.txt"))
        if proc.returncode == 0 and len(results) == n:
            break
        for stale in tmp_path.glob("result*.txt"):
            stale.unlink()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(results) == n, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert [r[:5] for r in results] == [[str(i), str(n), kind, "3", "no"] for i in range(n)]
    assert len({r[5] for r in results}) == 1  # ranks agree: gradients were averaged (or there is one rank)

"""t3d.tasks.loading: every dataset format through one loader (same items as the JSON file), the column mapping
and GSM8K answers, one-line errors; eval.py, sdar_sample.py and SFT training on a Parquet file equal the JSON run."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from t3d.train.data import load_examples, resolve_data_path
from t3d.common.paths import CHECKOUT as REPO_ROOT
from t3d.common.cli import run_main
from t3d.common.config import load_config
from t3d.tasks.loading import gsm8k_answer, load_records
from t3d.eval.evaluate import run_eval_job
from t3d.common.io import DataError, read_records
from t3d.decode.rollout import run_rollout_job

SMOKE = REPO_ROOT / "data" / "synthetic_math_smoke.json"
TEXT_KEYS = ("id", "question", "ground_truth_answer", "solution")  # what a CSV can hold


@pytest.fixture(autouse=True, scope="module")
def quiet():
    datasets.disable_progress_bars()  # to_parquet's bar


def parquet(items, path):
    datasets.Dataset.from_list(items).to_parquet(str(path))
    return path


def write_csv(items, path, keys):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows({k: item[k] for k in keys} for item in items)
    return path


def test_every_format_loads_the_items_of_the_json_file(tmp_path):
    items = read_records(SMOKE)
    assert load_records("synthetic_math_smoke") == (SMOKE, items)  # shipped names: as before
    jsonl = tmp_path / "smoke.jsonl"
    jsonl.write_text("".join(json.dumps(item) + "\n" for item in items))
    assert load_records(str(jsonl)) == (jsonl, items)
    pq_path = parquet(items, tmp_path / "smoke.parquet")  # lists and ints too: same items, so same fingerprints
    assert load_records(str(pq_path)) == (pq_path, items)
    csv_path = write_csv(items, tmp_path / "smoke.csv", TEXT_KEYS)
    assert load_records(str(csv_path)) == (csv_path, [{k: item[k] for k in TEXT_KEYS} for item in items])


def test_csv_cells_stay_text_and_arrow_nulls_read_as_absent_keys(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('question,ground_truth_answer,note\n"What is 3+4, exactly?",007,\nq2,1e3,None\n')
    assert load_records(str(path))[1] == [{"question": "What is 3+4, exactly?", "ground_truth_answer": "007", "note": ""},
                                          {"question": "q2", "ground_truth_answer": "1e3", "note": "None"}]
    pq.write_table(pa.table({"question": ["a", "b"], "test_time_limit": [None, 2]}), tmp_path / "n.parquet")
    assert load_records(str(tmp_path / "n.parquet"))[1] == [{"question": "a"}, {"question": "b", "test_time_limit": 2}]


def test_column_mapping_and_gsm8k_answers(tmp_path):
    rows = [{"problem": "Tom has 3 apples and buys 1,000 more. How many?", "answer": "3+1000=1003\n#### 1,003"},
            {"problem": "Half of -9?", "answer": "-9/2=-4.5\n#### -4.5 \n"}]
    path = parquet(rows, tmp_path / "gsm8k.parquet")
    _, items = load_records(str(path), columns={"question": "problem", "ground_truth_answer": "answer"},
                            answer_format="gsm8k")
    assert items == [{**rows[0], "question": rows[0]["problem"], "ground_truth_answer": "1003"},
                     {**rows[1], "question": rows[1]["problem"], "ground_truth_answer": "-4.5"}]
    assert [gsm8k_answer(t) for t in ("#### 42", "a\n####  7 \n", "no marker", None)] == ["42", "7", None, None]


@pytest.mark.parametrize("make, options, message", [
    (None, {}, "{tmp}/nope.parquet: file not found"),
    ("a.txt", {}, "{tmp}/a.txt: unsupported dataset format '.txt' (expected .json, .jsonl, .parquet, .csv, "
                  "or hub:<owner>/<name> for a hub dataset)"),
    ("bad.parquet", {}, "{tmp}/bad.parquet: cannot read as Parquet (ArrowInvalid: Parquet file size is 7 bytes"),
    ("ragged.csv", {}, "{tmp}/ragged.csv: cannot read as CSV (ParserError: Error tokenizing data. C error: "
                       "Expected 2 fields in line 3, saw 3)"),
    ("latin.csv", {}, "{tmp}/latin.csv: not UTF-8 text (byte 13: invalid continuation byte)"),
    ("empty.parquet", {}, "{tmp}/empty.parquet: dataset is empty"),
    ("header.csv", {}, "{tmp}/header.csv: dataset is empty"),
    ("ok.parquet", {"columns": {"question": "problem"}},
     "evaluation.dataset_columns.question: no column 'problem' in {tmp}/ok.parquet (columns: question, answer)"),
    ("ok.parquet", {"answer_format": "gsm8k"},
     "{tmp}/ok.parquet: item 0: evaluation.dataset_answer_format=gsm8k but 'ground_truth_answer' has no "
     "'#### <answer>' (map it with evaluation.dataset_columns.ground_truth_answer=<column>)"),
    ("ok.parquet", {"answer_format": "boxed"}, "evaluation.dataset_answer_format must be null or one of gsm8k, got 'boxed'"),
    ("ok.parquet", {"split": "test"}, "evaluation.dataset_split='test' applies to hub datasets (hub:<owner>/<name>) only"),
])
def test_bad_data_is_a_one_line_error_naming_file_or_key(tmp_path, make, options, message):
    path = tmp_path / (make or "nope.parquet")
    if make == "a.txt":
        path.write_text("question\n")
    elif make == "bad.parquet":
        path.write_bytes(b"garbage")
    elif make == "ragged.csv":
        path.write_text("question,answer\nq,1\nq,2,3\n")
    elif make == "latin.csv":
        path.write_bytes("q\nq\nCombien ?".encode() + "é".encode("latin-1") + b"\n")
    elif make == "empty.parquet":
        pq.write_table(pa.table({"question": pa.array([], pa.string())}), path)
    elif make == "header.csv":
        path.write_text("question,answer\n")
    elif make == "ok.parquet":
        parquet([{"question": "1+1?", "answer": "2"}], path)
    with pytest.raises(DataError) as err:
        load_records(str(path), key_prefix="evaluation.dataset_", **options)
    assert str(err.value).startswith(message.replace("{tmp}", str(tmp_path))) and "\n" not in str(err.value), err.value


HUB_HINT = "save it with data/download_data.py on a machine with network, or pass a local .json/.jsonl/.parquet/.csv file"


def test_hub_split_selection_through_load_dataset(tmp_path, monkeypatch):
    """`hub:` hands the id to datasets.load_dataset, which also takes a local folder of split files: the split
    logic without network."""
    from t3d.tasks import loading

    monkeypatch.setattr(loading, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"question": "a", "answer": "#### 1"}\n')
    (folder / "test.jsonl").write_text('{"question": "b", "answer": "#### 2"}\n{"question": "c", "answer": "x #### 3"}\n')
    source, items = load_records(f"hub:{folder}", split="test", columns={"ground_truth_answer": "answer"},
                                 answer_format="gsm8k", key_prefix="evaluation.dataset_")
    assert source == f"hub:{folder} (split test)"
    assert items == [{"question": "b", "answer": "#### 2", "ground_truth_answer": "2"},
                     {"question": "c", "answer": "x #### 3", "ground_truth_answer": "3"}]
    with pytest.raises(DataError, match=f"^hub dataset hub:{folder} has the splits train, test: choose one with "
                                        "evaluation.dataset_split$"):
        load_records(f"hub:{folder}", key_prefix="evaluation.dataset_")
    with pytest.raises(DataError, match=r"^hub dataset .* \(split dev\): ValueError: Unknown split \"dev\""):
        load_records(f"hub:{folder}", split="dev")


def test_unreachable_hub_fails_at_once_with_one_line(monkeypatch):
    from t3d.tasks import loading

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(loading, "hub_reachable", lambda: False)
    with pytest.raises(DataError) as err:
        load_records("hub:openai/gsm8k", subset="main", split="test")
    assert str(err.value) == ("could not fetch the hub dataset hub:openai/gsm8k (subset main, split test): the hub is "
                              f"unreachable (HF_HUB_OFFLINE=1 uses a copy in the local datasets cache); {HUB_HINT}")


def test_training_reads_every_format_and_hub_data_through_a_snapshot(tmp_path, tiny, monkeypatch, capsys):
    from t3d.tasks import loading

    _, tokenizer = tiny
    items = [{"question": f"Compute {a}+1.", "solution": f"{a}+1={a + 1}. \\boxed{{{a + 1}}}"} for a in range(3)]
    limits = dict(max_prompt_len=64, max_gen_length=32, post_num=0, skip_invalid=False, kind="sft", log=lambda _: None)
    json_path = tmp_path / "items.json"
    json_path.write_text(json.dumps(items))
    expected = load_examples(json_path, tokenizer, **limits)
    rows = [{"problem": i["question"], "target": i["solution"]} for i in items]
    renamed = parquet(rows, tmp_path / "items.parquet")
    mapping = {"columns": {"question": "problem", "solution": "target"}}
    assert resolve_data_path(str(renamed)) == renamed
    assert load_examples(renamed, tokenizer, **limits, dataset_cfg=mapping) == expected
    with pytest.raises(DataError, match="^dataset.columns.solution: no column 'answer' in .*items.parquet "
                                        r"\(columns: problem, target\)$"):
        load_examples(renamed, tokenizer, **limits, dataset_cfg={"columns": {"solution": "answer"}})
    # a hub dataset (here load_dataset's local folder form) becomes one content-named JSONL file in the cache
    monkeypatch.setattr(loading, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "repo"
    folder.mkdir()
    parquet(rows, folder / "train.parquet")
    parquet(rows[:1], folder / "test.parquet")
    snapshot = resolve_data_path(f"hub:{folder}", {"split": "train"})
    assert snapshot.parent == tmp_path / "cache" / "t3d_snapshots" and snapshot.suffix == ".jsonl"
    assert read_records(snapshot) == rows and f"hub:{folder} (split train): training on its rows" in capsys.readouterr().out
    assert resolve_data_path(f"hub:{folder}", {"split": "train"}) == snapshot  # same rows, same file
    assert load_examples(snapshot, tokenizer, **limits, dataset_cfg=mapping) == expected
    assert resolve_data_path(f"hub:{folder}", {"split": "test"}) != snapshot


# ---------------------------------------------------------------- through the CLIs

def job_cfg(config, tmp_path, ckpt, data, *overrides):
    return load_config([f"config={REPO_ROOT}/configs/{config}", f"evaluation.checkpoint_path={ckpt}",
                        f"evaluation.eval_dataset={data}", f"experiment.output_dir={tmp_path}", "rollout.max_token=8",
                        *overrides])


def gsm8k_rows(items):
    """The smoke items as GSM8K publishes its rows: no ground_truth_answer, the answer after #### in `answer`."""
    return [{"question": i["question"], "answer": f"{i['solution']}\n#### {i['ground_truth_answer']}"} for i in items]


def test_eval_and_rollout_on_a_gsm8k_style_parquet_equal_the_json_run(tmp_path):
    items = read_records(SMOKE)[:8]
    json_path = tmp_path / "toy.json"
    json_path.write_text(json.dumps(items))
    pq_path = parquet(gsm8k_rows(items), tmp_path / "toy.parquet")
    mapping = ["evaluation.dataset_columns.ground_truth_answer=answer", "evaluation.dataset_answer_format=gsm8k"]
    ckpt, length = REPO_ROOT / "models" / "sdar-tiny", "rollout.max_token=24"  # the trained default: accuracy 0.5 at S=1
    by_json = run_eval_job(job_cfg("eval.yaml", tmp_path / "a", ckpt, json_path, length))[0]
    by_parquet = run_eval_job(job_cfg("eval.yaml", tmp_path / "b", ckpt, pq_path, length, *mapping))[0]
    assert by_parquet["settings"]["evaluation.eval_dataset"] == str(pq_path)
    same = ("accuracy", "answer_rate", "items", "mean_nfe", "mean_response_length", "tokens_per_forward")
    assert {k: by_parquet[k] for k in same} == {k: by_json[k] for k in same} and by_json["accuracy"] == 0.5

    def outputs(row):
        lines = (Path(row["run_dir"]) / "items.jsonl").read_text().splitlines()
        return [{k: r[k] for k in ("prompt", "output", "extracted", "gold", "correct", "step_map")} for r in map(json.loads, lines)]

    assert outputs(by_parquet) == outputs(by_json)
    # rollout: the same items decoded into the same trajectories
    out_json = run_rollout_job(job_cfg("sdar_sample.yaml", tmp_path / "c", ckpt, json_path, length))
    out_parquet = run_rollout_job(job_cfg("sdar_sample.yaml", tmp_path / "d", ckpt, pq_path, length, *mapping))
    keys = ("question", "ground_truth_answer", "response_ids", "step_map", "full_output")
    assert [{k: r[k] for k in keys} for r in json.loads(out_parquet.read_text())] == \
           [{k: r[k] for k in keys} for r in json.loads(out_json.read_text())]


def run_eval_cli(argv, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["eval.py", *argv])
    monkeypatch.delenv("T3D_DEBUG", raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_main(run_eval_job, argv, REPO_ROOT / "configs" / "eval.yaml")
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("data, overrides, message", [
    ("bad.parquet", [], "{tmp}/bad.parquet: cannot read as Parquet (ArrowInvalid: "),
    ("toy.parquet", ["evaluation.dataset_columns.question=problem"],
     "evaluation.dataset_columns.question: no column 'problem' in {tmp}/toy.parquet (columns: question, answer)"),
    ("toy.tsv", [], "{tmp}/toy.tsv: unsupported dataset format '.tsv'"),
])
def test_eval_cli_bad_data_exits_2_with_one_line_and_writes_nothing(tmp_path, tiny_dir, monkeypatch, capsys, data,
                                                                    overrides, message):
    parquet(gsm8k_rows(read_records(SMOKE)[:1]), tmp_path / "toy.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "toy.tsv").write_text("question\tanswer\n")
    before = sorted(tmp_path.rglob("*"))
    code, err = run_eval_cli([f"config={REPO_ROOT}/configs/eval.yaml", f"evaluation.checkpoint_path={tiny_dir}",
                              f"evaluation.eval_dataset={tmp_path / data}", f"experiment.output_dir={tmp_path}/out",
                              *overrides], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("eval.py: error: " + message.replace("{tmp}", str(tmp_path))), err
    assert sorted(tmp_path.rglob("*")) == before


def test_hub_dataset_offline_is_one_line_at_once_and_writes_nothing(tmp_path):
    # HF_DATASETS_OFFLINE here; download_data's test covers HF_HUB_OFFLINE
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "eval.py", "config=configs/eval.yaml", "evaluation.eval_dataset=hub:openai/gsm8k",
                           "evaluation.dataset_subset=main", "evaluation.dataset_split=test",
                           f"experiment.output_dir={tmp_path}/out"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("eval.py: error: could not fetch the hub dataset hub:openai/gsm8k (subset main, split "
                                  "test) (ConnectionError: ") and proc.stderr.rstrip().endswith(HUB_HINT)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sft_on_a_mapped_parquet_or_hub_dataset_trains_exactly_as_on_the_json_file(tmp_path):
    items = [{"question": f"Compute {a}+{a + 1}.", "solution": f"{a}+{a + 1}={2 * a + 1}. \\boxed{{{2 * a + 1}}}"}
             for a in range(10, 26)]
    (tmp_path / "items.json").write_text(json.dumps(items))
    rows = [{"problem": i["question"], "target": i["solution"]} for i in items]
    parquet(rows, tmp_path / "items.parquet")
    (tmp_path / "repo").mkdir()  # a hub dataset in load_dataset's local folder form, read offline
    parquet(rows, tmp_path / "repo" / "train.parquet")
    parquet(rows[:2], tmp_path / "repo" / "test.parquet")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "DS_ACCELERATOR": "cpu",
           "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    common = [f"experiment.output_dir={tmp_path}/exp", "training.batch_size_lm=8", "training.num_train_epochs=1",
              "lr_scheduler.params.warmup_steps=1", "training.num_threads=1", "model.scratch.hidden_size=32",
              "model.scratch.num_hidden_layers=1"]
    mapping = ["dataset.columns.question=problem", "dataset.columns.solution=target"]
    losses = {}
    for name, extra in (("json", [f"dataset.optimization_data={tmp_path / 'items.json'}"]),
                        ("parquet", [f"dataset.optimization_data={tmp_path / 'items.parquet'}", *mapping]),
                        ("hub", [f"dataset.optimization_data=hub:{tmp_path / 'repo'}", "dataset.split=train", *mapping])):
        proc = subprocess.run([sys.executable, "train/sft_sdar.py", "config=configs/sft_sdar.yaml", *common,
                               f"experiment.project={name}", *extra],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows_ = [json.loads(line) for line in (tmp_path / "exp" / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [row["loss"] for row in rows_]
    assert len(losses["json"]) == 2 and losses["parquet"] == losses["json"] and losses["hub"] == losses["json"]


def test_lm_eval_task_loads_a_mapped_parquet_like_eval(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "t3d_tasks", REPO_ROOT / "t3d" / "integrations" / "lm_eval_tasks" / "t3d_tasks.py")
    t3d_tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(t3d_tasks)
    items = read_records(SMOKE)[:3]
    path = parquet(gsm8k_rows(items), tmp_path / "g.parquet")
    split = t3d_tasks.load_toolkit_dataset(str(path), columns={"ground_truth_answer": "answer"}, answer_format="gsm8k",
                                           model_args="ignored")
    assert [(d["question"], d["ground_truth_answer"]) for d in split["test"]] == \
           [(i["question"], i["ground_truth_answer"]) for i in items]
    with pytest.raises(DataError, match=r"^dataset_kwargs.columns.question: no column 'problem'"):
        t3d_tasks.load_toolkit_dataset(str(path), columns={"question": "problem"})


def test_a_save_to_disk_folder_loads_like_its_rows(tmp_path):
    rows = [{"question": "Compute 1+2.", "ground_truth_answer": "3"}, {"question": "Compute 2+2.", "ground_truth_answer": "4"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    source, items = load_records(tmp_path / "one")
    assert items == rows and str(source) == str(tmp_path / "one")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}
                         ).save_to_disk(str(tmp_path / "dict"))
    assert load_records(tmp_path / "dict", split="test")[1] == rows[:1]
    with pytest.raises(DataError, match=r"has the splits train, test: choose one with dataset.split$"):
        load_records(tmp_path / "dict")
    with pytest.raises(DataError, match=r"evaluation.dataset_split='dev': .* has the splits train, test"):
        load_records(tmp_path / "dict", split="dev", key_prefix="evaluation.dataset_")


def test_a_plain_hub_id_says_to_write_hub():
    with pytest.raises(DataError, match=r"^openai/gsm8k: no such file or folder \(for a hub dataset write hub:openai/gsm8k\)$"):
        load_records("openai/gsm8k")


def test_training_snapshots_a_save_to_disk_folder(tmp_path):
    rows = [{"question": "Compute 1+2.", "ground_truth_answer": "3"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    path = resolve_data_path(str(tmp_path / "saved"), {"split": None, "subset": None})
    assert path.suffix == ".jsonl" and read_records(path) == rows

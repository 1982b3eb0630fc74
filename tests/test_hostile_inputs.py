"""Hostile and careless input to every command: each case exits with the command's error code, prints exactly
one error line and no traceback, and creates or changes nothing (the whole working folder is compared before
and after). The commands run in-process, as their console scripts and entry scripts call them."""
import json

import pytest

from t3d import commands
from t3d.common.paths import CHECKOUT
from t3d.decode import shards, view
from t3d.model import publish
from t3d.model.checkpoint import load_tokenizer
from t3d.train import records
from tests.test_train_data import fabricate_records

STAGES = {"sample": commands.sample, "eval": commands.evaluate, "train": commands.train, "sft": commands.sft}
TRAINERS = ("train", "sft")
DATA_KEY = {"sample": "evaluation.eval_dataset", "eval": "evaluation.eval_dataset",
            "train": "dataset.optimization_data", "sft": "dataset.optimization_data"}
MODEL_KEY = {"sample": "evaluation.checkpoint_path", "eval": "evaluation.checkpoint_path",
             "train": "model.pretrained_model", "sft": "model.pretrained_model"}


def snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def inputs(tmp):
    """The bad files the cases refer to, made once per test in its own folder."""
    files = {
        "malformed.yaml": "experiment: [unclosed\n  project: x\n",
        "latin1.yaml": b"experiment:\n  project: caf\xe9\n",
        "list.yaml": "- a\n- b\n",
        "scalar.yaml": "5\n",
        "empty.yaml": "",
        "partial.yaml": "experiment:\n  project: x\n",
        "nested.json": "[" * 100000 + "]" * 100000,
        "surrogate.json": json.dumps([{"question": "Compute 1+\ud800.", "ground_truth_answer": "1"}]),
        "latin1.json": b'[{"question": "caf\xe9"}]',
        "object.json": '{"question": "not a list"}',
        "empty.json": "[]",
        "numbers.json": "[1, 2, 3]",
        "truncated.json": '[{"question": "Compute 1+1."',
        "notes.txt": "plain text",
    }
    return {name: write(tmp / "in" / name, text) for name, text in files.items()}


def run(function, argv, tmp_path, capsys, code=2):
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as stop:
        function(argv)
    err, status = capsys.readouterr().err, stop.value.code
    if isinstance(status, str):  # sys.exit("message"): Python prints it and exits 1
        err, status = err + status + "\n", 1
    assert status == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in err, err
    assert snapshot(tmp_path) == before
    return lines[0]


CONFIG_CASES = [  # (config file, expected text in the error line)
    ("malformed.yaml", "not valid YAML at line 2"),
    ("latin1.yaml", "not UTF-8 text"),
    ("list.yaml", "expected a mapping of config sections"),
    ("scalar.yaml", "expected a mapping of config sections"),
    ("empty.yaml", "the config is empty"),
    ("partial.yaml", "the config has no key"),
    ("missing.yaml", "config file not found"),
]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("config, message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_files(stage, config, message, tmp_path, capsys):
    inputs(tmp_path)
    line = run(STAGES[stage], [f"config={tmp_path / 'in' / config}"], tmp_path, capsys)
    assert message in line


ARGUMENT_CASES = [  # (arguments, expected text)
    (["not-a-key-value"], "is not key=value"),
    (["config="], "config file not found"),
    (["experiment.projcet=x"], "unknown config key 'experiment.projcet'"),
    (["experiment=[unbalanced"], "cannot parse the command line"),
]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("args, message", ARGUMENT_CASES, ids=[c[0][0] for c in ARGUMENT_CASES])
def test_bad_command_lines(stage, args, message, tmp_path, capsys):
    line = run(STAGES[stage], [f"experiment.output_dir={tmp_path / 'out'}", *args], tmp_path, capsys)
    assert message in line


DATA_CASES = [  # (file, expected text)
    ("nested.json", "nested too deeply"),
    ("surrogate.json", "unpaired surrogate"),
    ("latin1.json", "not UTF-8 text"),
    ("truncated.json", "malformed JSON"),
    ("missing.json", "not found"),
    ("notes.txt", "unsupported dataset format"),
]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("name, message", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_files(stage, name, message, tmp_path, capsys):
    inputs(tmp_path)
    argv = [f"experiment.output_dir={tmp_path / 'out'}", f"{DATA_KEY[stage]}={tmp_path / 'in' / name}"]
    if stage == "sft":
        argv.append("model.init_from_scratch=false")
    line = run(STAGES[stage], argv, tmp_path, capsys)
    assert message in line


def damaged_checkpoints(tmp):
    """Checkpoint folders a careless user may point at."""
    tiny = CHECKOUT / "models" / "sdar-tiny"
    out = {}
    out["a file"] = write(tmp / "ckpt-file", "not a folder")
    out["no config"] = write(tmp / "ckpt-empty" / "README.md", "x").parent
    bad = tmp / "ckpt-badjson"
    bad.mkdir()
    (bad / "config.json").write_text("{")
    out["bad config.json"] = bad
    llama = tmp / "ckpt-llama"
    llama.mkdir()
    config = json.loads((tiny / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    out["another model type"] = llama
    torn = tmp / "ckpt-torn"
    torn.mkdir()
    for f in tiny.iterdir():
        if f.is_file():
            data = f.read_bytes()
            (torn / f.name).write_bytes(data[: len(data) // 2] if f.suffix == ".safetensors" else data)
    out["truncated weights"] = torn
    return out


CHECKPOINT_CASES = [("a file", "no such directory"), ("no config", "has no config.json"),
                    ("bad config.json", "valid JSON"), ("another model type", "is not an SDAR"),
                    ("truncated weights", "truncated or corrupt safetensors")]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("case, message", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_bad_checkpoints(stage, case, message, tmp_path, capsys):
    path = damaged_checkpoints(tmp_path)[case]
    argv = [f"experiment.output_dir={tmp_path / 'out'}", f"{MODEL_KEY[stage]}={path}"]
    if stage in TRAINERS:  # valid data, so the checkpoint is what fails
        tokenizer = load_tokenizer(str(CHECKOUT / "models" / "sdar-tiny"))
        records_path = write(tmp_path / "in" / "records.json", json.dumps(fabricate_records(tokenizer, 2)))
        argv.append(f"dataset.optimization_data={records_path}")
    if stage == "sft":
        argv.append("model.init_from_scratch=false")
    line = run(STAGES[stage], argv, tmp_path, capsys)
    assert message in line


@pytest.mark.parametrize("stage", TRAINERS)
@pytest.mark.parametrize("seed", ["-1", "4294967296", "99999999999999999999"])
def test_trainer_seeds_outside_what_seeding_accepts(stage, seed, tmp_path, capsys):
    line = run(STAGES[stage], [f"experiment.output_dir={tmp_path / 'out'}", f"training.seed={seed}"], tmp_path, capsys)
    assert "training.seed must be in [0, 2**32)" in line


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(CHECKOUT / "models" / "sdar-tiny"))


def record_cases(tokenizer):
    good = fabricate_records(tokenizer, 1)[0]
    return {
        "token id outside the vocabulary": ({**good, "response_ids": good["response_ids"][:-1] + [999999]},
                                            "outside the tokenizer's vocabulary"),
        "huge step without settings": ({**good, "step_map": good["step_map"][:-1] + [10**12]}, "step_map has the value"),
        "negative step": ({**good, "step_map": [0] + good["step_map"][1:]}, "decoding steps start at 1"),
        "steps and ids differ in length": ({**good, "step_map": good["step_map"][:-1]}, "entries but response_ids has"),
        "block size of another rollout": ({**good, "block_size": 8}, "training.block_size"),
    }


@pytest.mark.parametrize("case", ["token id outside the vocabulary", "huge step without settings", "negative step",
                                  "steps and ids differ in length", "block size of another rollout"])
def test_trainer_refuses_impossible_records(case, tokenizer, tmp_path, capsys):
    record, message = record_cases(tokenizer)[case]
    data = write(tmp_path / "in" / "records.json", json.dumps([record]))
    line = run(commands.train, [f"experiment.output_dir={tmp_path / 'out'}", f"dataset.optimization_data={data}",
                                "training.skip_invalid_records=false"], tmp_path, capsys)
    assert message in line


def rollout_file(tmp, name, ids):
    items = [{"id": i, "question": f"q{i}", "prompt": "p", "full_output": ["a"], "response_ids": [[5, 2]],
              "step_map": [[1, 2]], "block_size": 4, "denoising_steps_per_block": 4} for i in ids]
    return write(tmp / "in" / name, json.dumps(items))


def exit_code_of(main):
    def call(argv):
        code = main(argv)
        if code:
            raise SystemExit(code)
    return call


PREPROCESS_CASES = ["the same input twice", "output is the input", "overlapping item ids", "nested JSON",
                    "surrogate text", "not a list", "missing input"]


@pytest.mark.parametrize("case", PREPROCESS_CASES)
def test_preprocess_refuses(case, tmp_path, capsys):
    a, b = rollout_file(tmp_path, "a.json", [0, 1]), rollout_file(tmp_path, "b.json", [1, 2])
    bad = inputs(tmp_path)
    argv, message = {
        "the same input twice": (["--input", str(a), "--input", str(a), "--output", str(tmp_path / "o.json")], "given twice"),
        "output is the input": (["--input", str(a), "--output", str(a)], "the output is also an input"),
        "overlapping item ids": (["--input", str(a), "--input", str(b), "--output", str(tmp_path / "o.json")],
                                 "already seen in"),
        "nested JSON": (["--input", str(bad["nested.json"]), "--output", str(tmp_path / "o.json")], "nested too deeply"),
        "surrogate text": (["--input", str(bad["surrogate.json"]), "--output", str(tmp_path / "o.json"), "--strict"],
                           "unpaired surrogate"),
        "not a list": (["--input", str(bad["object.json"]), "--output", str(tmp_path / "o.json")],
                       "no valid training records"),
        "missing input": (["--input", str(tmp_path / "nope.json"), "--output", str(tmp_path / "o.json")], "nope.json"),
    }[case]
    line = run(exit_code_of(records.main), argv, tmp_path, capsys, code=1)
    assert message in line


MERGE_CASES = ["the same shard twice", "output is a shard", "overlapping shards", "shards of two checkpoints",
               "nested JSON"]


@pytest.mark.parametrize("case", MERGE_CASES)
def test_merge_shards_refuses(case, tmp_path, capsys):
    s0 = rollout_file(tmp_path, "outputs-0-eval-ckptA-data.json", [0, 1])
    s1 = rollout_file(tmp_path, "outputs-1-eval-ckptA-data.json", [1, 2])
    s1b = rollout_file(tmp_path, "outputs-1-eval-ckptB-data.json", [3])
    bad = inputs(tmp_path)
    argv, message = {
        "the same shard twice": ([str(s0), str(s0), "--output", str(tmp_path / "m.json")], "given twice"),
        "output is a shard": ([str(s0), str(s1), "--output", str(s1)], "the output is also an input"),
        "overlapping shards": ([str(s0), str(s1), "--output", str(tmp_path / "m.json")], "already seen in"),
        "shards of two checkpoints": ([str(s0), str(s1b), "--output", str(tmp_path / "m.json")], "shards of different runs"),
        "nested JSON": ([str(bad["nested.json"]), "--output", str(tmp_path / "m.json")], "nested too deeply"),
    }[case]
    line = run(shards.main, argv, tmp_path, capsys, code=1)
    assert message in line


VIEW_CASES = ["no such item", "no such replica", "not a trajectory file", "nested JSON", "missing file"]


@pytest.mark.parametrize("case", VIEW_CASES)
def test_viewer_refuses(case, tmp_path, capsys):
    example = CHECKOUT / "data" / "rollout_example_sdar-tiny.json"
    bad = inputs(tmp_path)
    argv, message = {
        "no such item": ([str(example), "--item", "50"], "no item 50"),
        "no such replica": ([str(example), "--replica", "3"], "no replica 3"),
        "not a trajectory file": ([str(CHECKOUT / "data" / "synthetic_math_smoke.json")], "no token ids"),
        "nested JSON": ([str(bad["nested.json"])], "nested too deeply"),
        "missing file": ([str(tmp_path / "none.json")], "none.json"),
    }[case]
    line = run(exit_code_of(view.main), [*argv, "--tokenizer", "models/sdar-tiny"], tmp_path, capsys)
    assert message in line


EXPORT_CASES = ["not a checkpoint", "existing output", "bad eval file", "eval file without accuracy"]


@pytest.mark.parametrize("case", EXPORT_CASES)
def test_export_refuses(case, tmp_path, capsys):
    bad = inputs(tmp_path)
    tiny = str(CHECKOUT / "models" / "sdar-tiny")
    (tmp_path / "taken").mkdir()
    argv, message = {
        "not a checkpoint": ([str(tmp_path / "in"), str(tmp_path / "o")], "config.json"),
        "existing output": ([tiny, str(tmp_path / "taken")], "already exists"),
        "bad eval file": ([tiny, str(tmp_path / "o"), "--eval", str(bad["truncated.json"])], "not valid JSON"),
        "eval file without accuracy": ([tiny, str(tmp_path / "o"), "--eval", str(bad["numbers.json"])], "no accuracy"),
    }[case]
    line = run(exit_code_of(publish.main), argv, tmp_path, capsys)
    assert message in line



@pytest.mark.parametrize("stage", ["sample", "eval"])
@pytest.mark.parametrize("seed", ["-1", "4294967296", "99999999999999999999"])
def test_rollout_seeds_outside_what_seeding_accepts(stage, seed, tmp_path, capsys):
    line = run(STAGES[stage], [f"experiment.output_dir={tmp_path / 'out'}", f"rollout.seed={seed}"], tmp_path, capsys)
    assert "rollout.seed must be in [0, 2**32)" in line


@pytest.mark.parametrize("stage", ["sample", "eval"])
@pytest.mark.parametrize("max_token, message", [("2000", "leaves no room for a prompt"),
                                                ("1000", "none of the 4 items can be decoded")])
def test_responses_longer_than_the_model_context(stage, max_token, message, tmp_path, capsys):
    line = run(STAGES[stage], [f"experiment.output_dir={tmp_path / 'out'}", f"rollout.max_token={max_token}",
                               "evaluation.max_items=4"], tmp_path, capsys)
    assert message in line

"""Bad input to sdar_sample.py and eval.py: exit 2, exactly one line on stderr naming the key, file or record,
no traceback, and nothing written. The CLIs run in-process through t3d.common.cli.run_main (the entry scripts'
whole code path after import; a subprocess costs ~4 s of imports per case), two through a real subprocess."""
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from t3d.common.paths import CHECKOUT as REPO_ROOT
from t3d.common.cli import run_main
from t3d.common.config import help_text, load_config
from t3d.eval.evaluate import run_eval_job
from t3d.decode.rollout import run_rollout_job

SCRIPTS = {
    "sdar_sample.py": (run_rollout_job, REPO_ROOT / "configs" / "sdar_sample.yaml"),
    "eval.py": (run_eval_job, REPO_ROOT / "configs" / "eval.yaml"),
}
ITEMS = [{"question": f"What is {a}+{b}?", "ground_truth_answer": str(a + b)} for a, b in [(1, 2), (3, 4)]]


@pytest.fixture
def env(tmp_path, tiny_dir):
    """A private copy of the tiny checkpoint (corrupted by some cases), a dataset and an output dir."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, ckpt)
    data = tmp_path / "toy.json"
    data.write_text(json.dumps(ITEMS))
    return tmp_path, ckpt, data


def snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_mode, hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def run_cli(script, argv, monkeypatch, capsys):
    """(exit code, stdout, stderr) of `script argv` run through run_main, as the entry script does."""
    job, default = SCRIPTS[script]
    monkeypatch.setattr(sys, "argv", [script, *argv])
    monkeypatch.delenv("T3D_DEBUG", raising=False)
    capsys.readouterr()
    try:
        run_main(job, argv, default)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def corrupt(ckpt, how):
    weights, config = ckpt / "model.safetensors", ckpt / "config.json"
    if how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:5000])
    elif how == "garbage weights":
        weights.write_bytes(b"this is not a tensor file" * 10)
    elif how == "invalid config.json":
        config.write_text(config.read_text()[:40])
    else:  # model_type=<value>
        cfg = json.loads(config.read_text())
        cfg["model_type"] = how.split("=")[1]
        config.write_text(json.dumps(cfg))


# (script, overrides or a setup step, text the one error line must contain)
CASES = [
    ("sdar_sample.py", ["evaluation.max_items=-5"], "evaluation.max_items must be a positive integer or null (= all items), got -5"),
    ("eval.py", ["evaluation.max_items=0"], "evaluation.max_items must be a positive integer or null (= all items), got 0"),
    ("eval.py", ["evaluation.max_items=abc"], "evaluation.max_items must be a positive integer or null (= all items), got 'abc'"),
    ("sdar_sample.py", ["evaluation.max_items=1.5"], "evaluation.max_items must be a positive integer"),
    ("sdar_sample.py", ["rollout.denoising_steps_per_block=8"],
     "rollout.denoising_steps_per_block=8 exceeds rollout.block_size=4"),
    ("eval.py", ["rollout.denoising_steps_per_block=5"], "rollout.denoising_steps_per_block=5 exceeds rollout.block_size=4"),
    ("sdar_sample.py", ["rollout.num_response_per_task=0"], "rollout.num_response_per_task must be >= 1, got 0"),
    ("eval.py", ["rollout.num_response_per_task=0"], "rollout.num_response_per_task must be >= 1, got 0"),
    ("sdar_sample.py", ["rollout.temperature=-0.1"], "rollout.temperature must be >= 0 (0 = greedy), got -0.1"),
    ("eval.py", ["rollout.top_p=0"], "rollout.top_p must be in (0, 1], got 0"),
    ("sdar_sample.py", ["rollout.top_p=1.5"], "rollout.top_p must be in (0, 1], got 1.5"),
    ("eval.py", ["rollout.top_k=-1"], "rollout.top_k must be >= 0 (0 = off), got -1"),
    ("sdar_sample.py", ["rollout.dynamic_threshold=1.5"], "rollout.dynamic_threshold must be in (0, 1], got 1.5"),
    ("eval.py", ["rollout.max_token=0"], "rollout.max_token must be >= 1, got 0"),
    ("sdar_sample.py", ["rollout.block_size=0"], "rollout.block_size must be >= 1, got 0"),
    ("sdar_sample.py", ["rollout.random_init_ratio=1"], "rollout.random_init_ratio must be in [0, 1), got 1"),
    ("sdar_sample.py", ["rollout.batch_size=-1"], "rollout.batch_size must be >= 0"),
    ("sdar_sample.py", ["rollout.remasking_strategy=best"], "rollout.remasking_strategy must be one of low_confidence_static"),
    ("sdar_sample.py", ["rollout.dtype=fp8"], "rollout.dtype must be one of auto, fp32"),
    ("eval.py", ["rollout.dtype=fp8"], "rollout.dtype must be one of auto, fp32"),
    ("sdar_sample.py", ["evaluation.num_node=0"], "evaluation.num_node must be >= 1, got 0"),
    ("sdar_sample.py", ["evaluation.data_type=poetry"], "evaluation.data_type must be one of math, option, code, got 'poetry'"),
    ("eval.py", ["execute.memory_mb=0"], "execute.memory_mb must be >= 1, got 0"),
    ("eval.py", ["execute.test_time_limit=0"], "execute.test_time_limit must be a positive number of seconds or null, got 0"),
    ("eval.py", ["evaluation.num_threads=-1"], "evaluation.num_threads must be >= 0"),
    ("sdar_sample.py", ["rollout.max_token=null"], "rollout.max_token must be an integer, got None"),
    ("eval.py", ["rollout.temperature=null"], "rollout.temperature must be a number, got None"),
    ("sdar_sample.py", ["rollout.stop_token_list=['']"], "rollout.stop_token_list must be a list of non-empty strings"),
    ("sdar_sample.py", ["evaluation.node_index=3", "evaluation.num_node=2"], "evaluation.node_index must be in [0, num_node=2), got 3"),
    ("eval.py", ["sweep.denoising_steps=[2,1.5]"], "sweep.denoising_steps must be a non-empty list of integers"),
    ("eval.py", ["sweep.denoising_steps=[8]"], "sweep.denoising_steps must lie in [1, rollout.block_size=4], got [8]"),
    ("eval.py", ["sweep.dynamic_thresholds=[0]"], "sweep.dynamic_thresholds must lie in (0, 1], got [0.0]"),
    ("eval.py", ["sweep.checkpoints=[base=]"], "sweep.checkpoints entry 'base' must be a checkpoint directory or hub id, got ''"),
    ("eval.py", ["evaluation.checkpoint_path=null"], "evaluation.checkpoint_path must be a checkpoint directory or hub id, got None"),
    ("sdar_sample.py", ["evaluation.checkpoint_path={tmp}/missing"], "checkpoint_path '{tmp}/missing': no such directory"),
    ("sdar_sample.py", ["rollout.temprature=0.5"], "unknown config key 'rollout.temprature'"),
    ("eval.py", ["--verbose"], "argument '--verbose' is not key=value"),
    ("sdar_sample.py", ["evaluation.eval_dataset={tmp}/nope.json"], "{tmp}/nope.json: file not found"),
    ("eval.py", ["evaluation.eval_dataset=no_such_set"], "dataset 'no_such_set': no file "),
    ("sdar_sample.py", "latin-1 data", "{tmp}/toy.json: not UTF-8 text (byte 35: invalid continuation byte)"),
    ("eval.py", "latin-1 data", "{tmp}/toy.json: not UTF-8 text (byte 35: invalid continuation byte)"),
    ("eval.py", "list of numbers", "{tmp}/toy.json: item 0 is a int, expected an object"),
    ("eval.py", "question is a list", "{tmp}/toy.json: item 1: 'question' is a list, expected a string"),
    ("eval.py", "answer is a list", "{tmp}/toy.json: item 1: 'ground_truth_answer' is a list, expected a string or number"),
    ("sdar_sample.py", "truncated weights", "{tmp}/ckpt/model.safetensors: truncated or corrupt safetensors file"),
    ("eval.py", "garbage weights", "{tmp}/ckpt/model.safetensors: not a safetensors file"),
    ("sdar_sample.py", "invalid config.json", "{tmp}/ckpt/config.json: not valid JSON at line 3"),
    ("eval.py", "model_type=nosuch", "{tmp}/ckpt/config.json: model_type 'nosuch' is not an SDAR block-diffusion model"),
    ("sdar_sample.py", "model_type=llama", "{tmp}/ckpt/config.json: model_type 'llama' is not an SDAR block-diffusion model"),
    ("eval.py", "model_type=llama", "{tmp}/ckpt/config.json: model_type 'llama' is not an SDAR block-diffusion model"),
    ("sdar_sample.py", "output under a file", "experiment.output_dir: cannot write outputs under {tmp}/afile/out"),
    ("eval.py", "output under a file", "experiment.output_dir: cannot write outputs under {tmp}/afile/out"),
]


@pytest.mark.parametrize("script, change, message", CASES, ids=[f"{c[0]}:{c[1] if isinstance(c[1], str) else c[1][0]}"
                                                               for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(env, monkeypatch, capsys, script, change, message):
    tmp, ckpt, data = env
    out_dir = tmp / "out"
    overrides = []
    if isinstance(change, list):
        overrides = [o.replace("{tmp}", str(tmp)) for o in change]
    elif change == "latin-1 data":
        data.write_bytes('[{"question": "Combien font 2+2 ? Réponds."}]'.encode("latin-1"))
    elif change == "list of numbers":
        data.write_text("[1, 2]")
    elif change == "question is a list":
        data.write_text(json.dumps([ITEMS[0], {"question": ["What is 1+1?"], "ground_truth_answer": "2"}]))
    elif change == "answer is a list":
        data.write_text(json.dumps([ITEMS[0], {"question": "What is 1+1?", "ground_truth_answer": ["2"]}]))
    elif change == "output under a file":
        (tmp / "afile").write_text("x")
        out_dir = tmp / "afile" / "out"
    else:
        corrupt(ckpt, change)
    argv = [f"config={SCRIPTS[script][1]}", f"evaluation.checkpoint_path={ckpt}", f"evaluation.eval_dataset={data}",
            f"experiment.output_dir={out_dir}", "rollout.max_token=8", *overrides]
    before = snapshot(tmp)
    code, stdout, stderr = run_cli(script, argv, monkeypatch, capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"{script}: error: ") and message.replace("{tmp}", str(tmp)) in lines[0], lines[0]
    assert snapshot(tmp) == before  # no output file (or directory) created, nothing changed


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody may write to: chmod for users, a read-only tmpfs for root (chmod does not bind root)."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("root without permission to mount a read-only tmpfs")
    yield path
    subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_read_only_output_dir(env, read_only_dir, monkeypatch, capsys, script):
    tmp, ckpt, data = env
    argv = [f"config={SCRIPTS[script][1]}", f"evaluation.checkpoint_path={ckpt}", f"evaluation.eval_dataset={data}",
            f"experiment.output_dir={read_only_dir}"]
    code, _, stderr = run_cli(script, argv, monkeypatch, capsys)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith(f"{script}: error: experiment.output_dir: cannot write outputs under {read_only_dir}/")
    assert lines[0].endswith(f": {read_only_dir} is not writable")


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_full_disk_is_one_line_and_leaves_no_half_file(env, monkeypatch, capsys, script):
    """ENOSPC on the final write (simulated in-process: a tmpfs small enough would need root)."""
    import t3d.common.io

    tmp, ckpt, data = env
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a real full disk: no file name

    monkeypatch.setattr(t3d.common.io.os, "fdopen", lambda fd, *a, **kw: FullDisk(real_fdopen(fd, *a, **kw)))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    argv = [f"config={SCRIPTS[script][1]}", f"evaluation.checkpoint_path={ckpt}", f"evaluation.eval_dataset={data}",
            f"experiment.output_dir={tmp}/out", "rollout.max_token=8"]
    code, _, stderr = run_cli(script, argv, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"{script}: error: No space left on device: {tmp}/out/"), line
    written = [p for p in (tmp / "out").rglob("*") if p.is_file()]
    # the only survivor is the resumable partial file (whole lines); no temp file, no result
    assert [p.name for p in written if ".partial." not in p.name] == []
    for p in written:
        assert p.read_text().endswith("\n") and all(json.loads(line) for line in p.read_text().splitlines())


def test_append_text_cuts_a_failed_write_back(tmp_path, monkeypatch):
    from t3d.common.io import append_text

    path = tmp_path / "p.jsonl"
    append_text(path, '{"a": 1}\n')

    class Half:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[:3])
            raise OSError(errno.ENOSPC, "No space left on device")

    import builtins

    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda *a, **kw: Half(real_open(*a, **kw)))
    with pytest.raises(OSError):
        append_text(path, '{"a": 2}\n')
    monkeypatch.undo()
    assert path.read_text() == '{"a": 1}\n'


@pytest.mark.parametrize("script", ["eval.py", "sample/sdar_sample.py"])
def test_help_lists_keys_with_comments_and_exits_0(script):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / script), "--help"], capture_output=True, text=True,
                          cwd=REPO_ROOT / "models", timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0] == f"usage: {os.path.basename(script)} config=path.yaml [key=value ...]"
    assert any(line.startswith("  rollout.temperature=0.1 ") and line.endswith("# 0 = greedy") for line in lines)
    assert any(line.startswith("  evaluation.restart=false ") for line in lines)


@pytest.mark.slow  # the trainer imports accelerate/DeepSpeed before it reads argv (~10 s)
def test_trainer_help_lists_its_default_config():
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train" / "self_ddo_sdar_full.py"), "--help"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == help_text(REPO_ROOT / "configs" / "ddo_sdar_full_self.yaml", "self_ddo_sdar_full.py")


def test_help_for_the_trainer_config_and_for_config_given():
    text = help_text(REPO_ROOT / "configs" / "ddo_sdar_full_self.yaml", "self_ddo_sdar_full.py")
    assert text.startswith("usage: self_ddo_sdar_full.py config=path.yaml [key=value ...]\n")
    assert "\n  training.block_size=" in text and "\n  model.pretrained_model=" in text
    with pytest.raises(SystemExit) as exit_:  # the trainers' load_config(argv) call: `-h` with any config=
        load_config([f"config={REPO_ROOT}/configs/sft_sdar.yaml", "-h"])
    assert exit_.value.code == 0


def test_merge_shards_refuses_shards_of_other_settings_and_unwritable_output(tmp_path):
    def shard(name, steps):
        path = tmp_path / name
        path.write_text(json.dumps([{"question": "q", "block_size": 4, "denoising_steps_per_block": steps,
                                     "remasking_strategy": "low_confidence_static"}]))
        return str(path)

    script = str(REPO_ROOT / "utils" / "merge_shards.py")
    (tmp_path / "afile").write_text("x")
    for shards, output, message in [
        ([shard("outputs-0-eval-m-d.json", 4), shard("outputs-1-eval-m-d.json", 1)], tmp_path / "m.json",
         "merge_shards.py: error: shards were decoded with different settings (B=4 S=1 low_confidence_static, "
         "B=4 S=4 low_confidence_static); merge shards of one run only"),
        ([shard("outputs-0-eval-m-d.json", 4)], tmp_path / "afile" / "m.json", "merge_shards.py: error: Not a directory: "),
    ]:
        proc = subprocess.run([sys.executable, script, "--output", str(output), *shards], capture_output=True, text=True)
        assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(message), proc.stderr
        assert not (tmp_path / "m.json").exists()

"""README's commands run as written: the Python example, and both forms of the four stages (repository-root
and the original `cd` shapes), in a copy of the checkout so the repository itself is left untouched."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from t3d.common.paths import CHECKOUT

README = (CHECKOUT / "README.md").read_text(encoding="utf-8")


def blocks(language, after=None):
    text = README if after is None else README[README.index(after):]
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def copy_checkout(dest):
    files = subprocess.run(["git", "ls-files", "-z"], cwd=CHECKOUT, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    for name in filter(None, files):
        if (CHECKOUT / name).is_file() and not name.startswith(("results/", "tests/", "benchmarks/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(CHECKOUT / name, dest / name)
    return dest


def env_for(root):
    """The copy's t3d first on the path (so its paths resolve inside the copy), this venv's tools on PATH."""
    return {**os.environ, "PYTHONPATH": str(root), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def test_readme_python_example_runs(tmp_path):
    (example,) = blocks("python")
    out = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "boxed" in out.stdout and out.stdout.rstrip().endswith("]")


@pytest.mark.slow
def test_readme_stage_commands_run_as_written_in_both_forms(tmp_path):
    root = copy_checkout(tmp_path / "checkout")
    stage_blocks = blocks("bash", after="## The four stages")[:2]
    assert len(stage_blocks) == 2 and "cd sample" in stage_blocks[1]
    for block in stage_blocks:
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=root, env=env_for(root),
                             capture_output=True, text=True, timeout=1200)
        assert out.returncode == 0, out.stderr[-3000:]
    assert (root / "experiments" / "t3d_tiny" / "ckpt" / "optimized" / "config.json").is_file()
    assert (root / "experiments" / "t3d_tiny_accelerate" / "ckpt" / "optimized" / "config.json").is_file()
    assert (root / "data" / "sdar-tiny-synthetic_math_train_renamed.json").is_file()
    sweeps = list((root / "eval" / "results").glob("sweep-*/sweep.md"))
    assert sweeps and "t3d" in sweeps[0].read_text()

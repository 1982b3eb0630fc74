"""The package installs from a checkout (not editable) into a fresh environment and works from any directory:
`import t3d`, every console script's --help, and an evaluation on the bundled default config, model and data."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from t3d.common.paths import CHECKOUT

SCRIPTS = ("t3d-sample", "t3d-preprocess", "t3d-train", "t3d-sft", "t3d-eval", "t3d-lm-eval", "t3d-download",
           "t3d-merge-shards", "t3d-build-tiny", "t3d-view", "t3d-export")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv holding only t3d (installed from a copy of the tracked files); the test venv's packages are
    visible through a .pth file so nothing is downloaded."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=CHECKOUT, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    for name in filter(None, files):
        if (CHECKOUT / name).is_file() and not name.startswith(("results/", "tests/")):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(CHECKOUT / name, source / name)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-build-isolation", str(source)], check=True, capture_output=True)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    return venv, elsewhere, env


def run(cmd, installed, **kw):
    venv, elsewhere, env = installed
    return subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.slow
def test_import_finds_the_installed_package_and_its_bundle(installed):
    venv, _, _ = installed
    out = run([str(venv / "bin" / "python"), "-c", "import t3d, t3d.common.paths as p; "
               "print(t3d.__file__); print(p.CHECKOUT); print(sorted(x.name for x in p.MODELS.iterdir()))"],
              installed)
    assert out.returncode == 0, out.stderr
    location, checkout, models = out.stdout.splitlines()
    assert str(venv) in location and checkout == "None"
    assert "sdar-tiny" in models and "sdar-chain" in models


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_console_script_answers_help_from_another_directory(installed, script):
    out = run([script, "--help"], installed)
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()


@pytest.mark.slow
def test_eval_runs_on_the_bundled_default_and_writes_under_the_current_directory(installed):
    out = run(["t3d-eval", "evaluation.max_items=4", "rollout.max_token=24"], installed)
    assert out.returncode == 0, out.stderr
    metrics = list((installed[1] / "eval").rglob("metrics.json"))
    assert len(metrics) == 1
    assert json.loads(metrics[0].read_text())["items"] == 4

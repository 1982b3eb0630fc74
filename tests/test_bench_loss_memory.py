"""Smoke run of the loss-memory benchmark (small vocabulary, one length, nothing written): it must keep working."""
import subprocess
import sys

import pytest

from t3d.common.paths import CHECKOUT as REPO_ROOT


@pytest.mark.slow
def test_loss_memory_benchmark_quick_mode():
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_loss_memory", "--quick"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| 32 |" in res.stdout  # printed its table row for the one quick length

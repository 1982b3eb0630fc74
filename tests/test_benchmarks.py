"""Smoke runs of the benchmark scripts (tiny sizes, nothing written): they must keep working."""
import subprocess
import sys

import pytest

from utils.checkpoint import REPO_ROOT


@pytest.mark.slow
@pytest.mark.parametrize("script, args", [
    ("bench_decoding.py", ["--quick"]), ("bench_training.py", ["--quick"]), ("bench_data.py", ["--quick"]),
    ("bench_memory.py", ["--quick"]), ("gpu_check.py", ["--dry-run"]),
])
def test_benchmark_quick_mode(script, args):
    res = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "|" in res.stdout  # printed its Markdown table

"""Smoke runs of the benchmark scripts (tiny sizes, nothing written): they must keep working."""
import subprocess
import sys

import pytest

from t3d.common.paths import CHECKOUT as REPO_ROOT


@pytest.mark.slow
@pytest.mark.parametrize("script, args", [
    ("bench_decoding", ["--quick"]), ("bench_training", ["--quick"]), ("bench_data", ["--quick"]),
    ("bench_memory", ["--quick"]), ("gpu_check", ["--dry-run"]),
])
def test_benchmark_quick_mode(script, args):
    res = subprocess.run([sys.executable, "-m", f"benchmarks.{script}", *args], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "|" in res.stdout  # printed its Markdown table

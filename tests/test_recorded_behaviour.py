"""The pipeline's numbers on the embedded default, recorded before the library moved into the `t3d` package
(tests/fixtures/quickstart_digest.json): a shrunk quickstart (64 rollouts at S=4, one T3D epoch, base and T3D
on 40 test problems at S=4 and S=1) must give the same trajectories, training records, losses and eval figures.

Trajectories, records and eval figures are compared exactly (greedy or seeded decoding of the shipped model);
losses to 1e-4 relative: a float32 mean over ~2,000 tokens may be summed in another order on another CPU
(error <= n * 2^-24 ~ 1.2e-4 relative in the worst case)."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from t3d.common.paths import CHECKOUT

FIXTURE = Path(__file__).parent / "fixtures" / "quickstart_digest.json"


def _sha(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def digest(out):
    out = Path(out)
    rollout = json.loads(next((out / "sdar_sample" / "temp_data").glob("outputs-*.json")).read_text())
    records = json.loads((out / "data" / "sdar-tiny-quickstart_train_renamed.json").read_text())
    metrics = [json.loads(line) for line in (out / "t3d" / "metrics.jsonl").read_text().splitlines()]
    evals = {}
    for path in sorted((out / "eval" / "results").rglob("metrics.json")):
        m = json.loads(path.read_text())
        if "accuracy" in m:
            evals[f"{m['checkpoint']} S={m['denoising_steps_per_block']}"] = {
                k: m[k] for k in ("accuracy", "mean_nfe", "tokens_per_forward")}
    return {"trajectories": _sha([[i.get("response_ids"), i.get("step_map")] for i in rollout]),
            "records": _sha(records),
            "losses": [{k: v for k, v in m.items() if k in ("step", "loss", "path", "ddo_real", "ddo_fake")}
                       for m in metrics],
            "eval": evals}


@pytest.mark.slow
def test_shrunk_quickstart_reproduces_the_recorded_numbers(tmp_path):
    proc = subprocess.run([sys.executable, str(CHECKOUT / "scripts" / "quickstart.py"), "--out", str(tmp_path),
                           "--rollout-questions", "64", "--eval-questions", "40", "--epochs", "1", "--steps", "4,1"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected, got = json.loads(FIXTURE.read_text()), digest(tmp_path)
    assert got["trajectories"] == expected["trajectories"]
    assert got["records"] == expected["records"]
    assert got["eval"] == expected["eval"]
    assert [r["step"] for r in got["losses"]] == [r["step"] for r in expected["losses"]]
    for mine, recorded in zip(got["losses"], expected["losses"]):
        for key, value in recorded.items():
            assert mine[key] == pytest.approx(value, rel=1e-4), key

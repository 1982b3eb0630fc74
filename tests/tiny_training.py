"""One short T3D run of the embedded default through the entry script, as a user launches it (shared by tests)."""
import json
import os
import subprocess
import sys

from t3d.common.paths import CHECKOUT
from t3d.model.checkpoint import load_tokenizer
from tests.test_train_data import fabricate_records


def train_tiny_t3d(tmp_path, **env):
    """Train configs/t3d_tiny.yaml for one epoch on 8 fabricated records; returns the run directory."""
    tokenizer = load_tokenizer(str(CHECKOUT / "models" / "sdar-tiny"))
    data = tmp_path / "records.json"
    data.write_text(json.dumps(fabricate_records(tokenizer, 8)))
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", **env}
    env.pop("WANDB_DIR", None)
    out = subprocess.run(
        [sys.executable, "train/self_ddo_sdar_full.py", "config=configs/t3d_tiny.yaml", f"dataset.optimization_data={data}",
         f"experiment.output_dir={tmp_path / 'exp'}", "training.num_train_epochs=1", "training.batch_size_lm=4",
         "training.gradient_accumulation_steps=1", "training.num_threads=1"],
        cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return tmp_path / "exp" / "t3d_tiny"

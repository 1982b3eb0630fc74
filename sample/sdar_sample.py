"""Stage 1: decode a dataset with many denoising steps and record every token's trajectory.

    cd sample && python sdar_sample.py config=../configs/sdar_sample.yaml evaluation.eval_dataset=MATH_train ...
    accelerate launch sample/sdar_sample.py config=configs/sdar_sample.yaml ...     # one process per GPU

Writes <output_dir>/<project>/temp_data/outputs[-<node>]-eval-<checkpoint>-<dataset>.json (spec §2.10 plus
`response_ids`, aligned 1:1 with `step_map`), atomically; a rerun resumes after a crash.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.checkpoint import REPO_ROOT  # noqa: E402
from utils.cli import run_main  # noqa: E402
from utils.rollout import run_rollout_job  # noqa: E402

if __name__ == "__main__":
    run_main(run_rollout_job, default_config=REPO_ROOT / "configs" / "sdar_sample.yaml")

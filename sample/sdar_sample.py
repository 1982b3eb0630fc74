"""Stage 1: decode a dataset with many denoising steps and record every token's trajectory.

    cd sample && python sdar_sample.py config=../configs/sdar_sample.yaml evaluation.eval_dataset=MATH_train ...
    accelerate launch sample/sdar_sample.py config=configs/sdar_sample.yaml ...     # one process per GPU

Writes <output_dir>/<project>/temp_data/outputs[-<node>]-eval-<checkpoint>-<dataset>.json (spec §2.10 plus
`response_ids`, aligned 1:1 with `step_map`, and the `block_size`, `denoising_steps_per_block` and
`remasking_strategy` used), atomically. A rerun resumes after a crash only if weights, data and every decoding
setting are unchanged (else a one-line refusal naming what changed; evaluation.restart=true starts fresh).
--help lists the config keys.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.config import exit_if_help  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sdar_sample.yaml"

if __name__ == "__main__":
    exit_if_help(default_config=DEFAULT_CONFIG)  # before the torch/transformers imports: --help is instant
    from utils.cli import run_main
    from utils.rollout import run_rollout_job

    run_main(run_rollout_job, default_config=DEFAULT_CONFIG)

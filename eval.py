"""Few-step evaluation of block-diffusion checkpoints: accuracy beside decoding cost, sweeps and a plot.

    python eval.py config=configs/eval.yaml evaluation.checkpoint_path=<dir or hub id> \
        evaluation.eval_dataset=MATH500 evaluation.data_type=math \
        rollout.block_size=4 rollout.denoising_steps_per_block=1 rollout.temperature=0.1
    python eval.py config=configs/eval.yaml 'sweep.denoising_steps=[4,2,1]' \
        'sweep.checkpoints=[base=models/sdar-tiny,t3d=experiments/ddo_sdar_full_self/ckpt/optimized]'
    accelerate launch eval.py config=configs/eval.yaml ...      # decoding split across processes

Writes <output_dir>/<project>/results/<checkpoint>-<dataset>/<settings>/{metrics.json,metrics.md,items.jsonl,
config.yaml} (<settings> e.g. B4-S1-low_confidence_static-T0.1-len64-k1-seed0) and, for several evaluations,
results/sweep-<dataset>/{sweep.md,sweep.json,sweep.png}. An interrupted run resumes only with unchanged weights,
data and settings; evaluation.restart=true starts fresh. --help lists the config keys.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from utils.config import exit_if_help  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "eval.yaml"

if __name__ == "__main__":
    exit_if_help(default_config=DEFAULT_CONFIG)  # before the torch/transformers imports: --help is instant
    from utils.cli import run_main
    from utils.evaluation import run_eval_job

    run_main(run_eval_job, default_config=DEFAULT_CONFIG)

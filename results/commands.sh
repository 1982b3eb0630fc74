#!/usr/bin/env bash
# Commands run by scripts/run_experiment.py, with wall times on 2 CPU cores.
# Run from the repository root with the venv active (. .venv/bin/activate).
set -euo pipefail
ROOT="${ROOT:-$PWD}"

# rollout: 21 s
(cd sample && python sdar_sample.py config=../configs/sdar_sample.yaml "evaluation.checkpoint_path=${ROOT}/models/sdar-tiny" "evaluation.eval_dataset=${ROOT}/experiments/t3d_tiny/data/synthetic_math_train_rollout.json" evaluation.data_type=math rollout.block_size=4 rollout.denoising_steps_per_block=4 rollout.max_token=64 rollout.temperature=0.1 rollout.top_p=1.0 rollout.top_k=0 rollout.remasking_strategy=low_confidence_static rollout.num_response_per_task=1 rollout.seed=0 "experiment.output_dir=${ROOT}/experiments/t3d_tiny" experiment.project=sdar_sample)

# rename_key: 0 s
python data/rename_key.py --input "${ROOT}/experiments/t3d_tiny/sdar_sample/temp_data/outputs-eval-sdar-tiny-synthetic_math_train_rollout.json" --output "${ROOT}/experiments/t3d_tiny/data/sdar-tiny-synthetic_math_train_rollout_renamed.json"

# t3d_seed0: 86 s
python train/self_ddo_sdar_full.py config=configs/t3d_tiny.yaml "model.pretrained_model=${ROOT}/models/sdar-tiny" "dataset.optimization_data=${ROOT}/experiments/t3d_tiny/data/sdar-tiny-synthetic_math_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_tiny" training.num_threads=2 experiment.project=t3d_seed0 training.seed=0

# naive_seed0: 69 s
python train/sft_sdar.py config=configs/experiments/naive_sd_tiny.yaml "model.pretrained_model=${ROOT}/models/sdar-tiny" "dataset.optimization_data=${ROOT}/experiments/t3d_tiny/data/sdar-tiny-synthetic_math_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_tiny" training.num_threads=2 experiment.project=naive_seed0 training.seed=0

# t3d_seed1: 93 s
python train/self_ddo_sdar_full.py config=configs/t3d_tiny.yaml "model.pretrained_model=${ROOT}/models/sdar-tiny" "dataset.optimization_data=${ROOT}/experiments/t3d_tiny/data/sdar-tiny-synthetic_math_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_tiny" training.num_threads=2 experiment.project=t3d_seed1 training.seed=1

# naive_seed1: 74 s
python train/sft_sdar.py config=configs/experiments/naive_sd_tiny.yaml "model.pretrained_model=${ROOT}/models/sdar-tiny" "dataset.optimization_data=${ROOT}/experiments/t3d_tiny/data/sdar-tiny-synthetic_math_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_tiny" training.num_threads=2 experiment.project=naive_seed1 training.seed=1

# t3d_seed2: 93 s
python train/self_ddo_sdar_full.py config=configs/t3d_tiny.yaml "model.pretrained_model=${ROOT}/models/sdar-tiny" "dataset.optimization_data=${ROOT}/experiments/t3d_tiny/data/sdar-tiny-synthetic_math_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_tiny" training.num_threads=2 experiment.project=t3d_seed2 training.seed=2

# naive_seed2: 71 s
python train/sft_sdar.py config=configs/experiments/naive_sd_tiny.yaml "model.pretrained_model=${ROOT}/models/sdar-tiny" "dataset.optimization_data=${ROOT}/experiments/t3d_tiny/data/sdar-tiny-synthetic_math_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_tiny" training.num_threads=2 experiment.project=naive_seed2 training.seed=2

# eval_test: 74 s
python eval.py config=configs/eval.yaml "evaluation.eval_dataset=${ROOT}/data/synthetic_math_test.json" evaluation.data_type=math rollout.block_size=4 rollout.temperature=0.0 rollout.max_token=64 rollout.seed=0 'sweep.denoising_steps=[4,2,1]' "sweep.checkpoints=[base=${ROOT}/models/sdar-tiny,t3d_seed0=${ROOT}/experiments/t3d_tiny/t3d_seed0/ckpt/optimized,naive_seed0=${ROOT}/experiments/t3d_tiny/naive_seed0/ckpt/naive,t3d_seed1=${ROOT}/experiments/t3d_tiny/t3d_seed1/ckpt/optimized,naive_seed1=${ROOT}/experiments/t3d_tiny/naive_seed1/ckpt/naive,t3d_seed2=${ROOT}/experiments/t3d_tiny/t3d_seed2/ckpt/optimized,naive_seed2=${ROOT}/experiments/t3d_tiny/naive_seed2/ckpt/naive]" "experiment.output_dir=${ROOT}/experiments/t3d_tiny" experiment.project=eval_test

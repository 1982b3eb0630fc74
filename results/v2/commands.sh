#!/usr/bin/env bash
# Commands run by scripts/run_experiment_v2.py, with wall times on 2 CPU cores.
# Run from the repository root with the venv active (. .venv/bin/activate).
set -euo pipefail
ROOT="${ROOT:-$PWD}"
# All of it in one command (stage wall times: data 0 s, rollout 50 s, train 824 s, tune 68 s, eval 897 s, report 7 s):
#   python scripts/run_experiment_v2.py 

# data
mkdir -p "${ROOT}/experiments/t3d_chain_v2/data"
python -c 'import sys, json; json.dump(json.load(open(sys.argv[1]))[:int(sys.argv[3])], open(sys.argv[2], "w"))' "${ROOT}/data/synthetic_chain_train.json" "${ROOT}/experiments/t3d_chain_v2/data/synthetic_chain_train_rollout.json" 1000

# rollout: 44 s
(cd sample && python sdar_sample.py config=../configs/sdar_sample.yaml "evaluation.checkpoint_path=${ROOT}/models/sdar-chain" "evaluation.eval_dataset=${ROOT}/experiments/t3d_chain_v2/data/synthetic_chain_train_rollout.json" evaluation.data_type=math rollout.block_size=8 rollout.denoising_steps_per_block=8 rollout.max_token=80 rollout.temperature=0.1 rollout.top_p=1.0 rollout.top_k=0 rollout.remasking_strategy=low_confidence_static rollout.num_response_per_task=1 rollout.seed=0 "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=sdar_sample)

# rename_key: 0 s
python data/rename_key.py --input "${ROOT}/experiments/t3d_chain_v2/sdar_sample/temp_data/outputs-eval-sdar-chain-synthetic_chain_train_rollout.json" --output "${ROOT}/experiments/t3d_chain_v2/data/synthetic_chain_train_rollout_renamed.json"

# tune_val_dynamic: 68 s
python eval.py config=configs/eval.yaml "evaluation.eval_dataset=${ROOT}/data/synthetic_chain_val.json" evaluation.data_type=math rollout.block_size=8 rollout.temperature=0.0 rollout.max_token=80 rollout.seed=0 "sweep.checkpoints=[base=${ROOT}/models/sdar-chain]" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=tune_val_dynamic evaluation.num_threads=1 'sweep.dynamic_thresholds=[0.99,0.95,0.9,0.8,0.7,0.5]' sweep.denoising_steps=null

# train_naive_seed0: 95 s
python train/sft_sdar.py config=configs/experiments/naive_sd_chain.yaml experiment.start_from_scratch=true "model.pretrained_model=${ROOT}/models/sdar-chain" "dataset.optimization_data=${ROOT}/experiments/t3d_chain_v2/data/synthetic_chain_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=naive_seed0 training.seed=0 training.num_threads=1

# train_naive_seed1: 100 s
python train/sft_sdar.py config=configs/experiments/naive_sd_chain.yaml experiment.start_from_scratch=true "model.pretrained_model=${ROOT}/models/sdar-chain" "dataset.optimization_data=${ROOT}/experiments/t3d_chain_v2/data/synthetic_chain_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=naive_seed1 training.seed=1 training.num_threads=1

# train_naive_seed2: 85 s
python train/sft_sdar.py config=configs/experiments/naive_sd_chain.yaml experiment.start_from_scratch=true "model.pretrained_model=${ROOT}/models/sdar-chain" "dataset.optimization_data=${ROOT}/experiments/t3d_chain_v2/data/synthetic_chain_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=naive_seed2 training.seed=2 training.num_threads=1

# train_t3d_seed0: 119 s
python train/self_ddo_sdar_full.py config=configs/t3d_chain.yaml experiment.start_from_scratch=true "model.pretrained_model=${ROOT}/models/sdar-chain" "dataset.optimization_data=${ROOT}/experiments/t3d_chain_v2/data/synthetic_chain_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=t3d_seed0 training.seed=0 training.num_threads=1

# train_t3d_seed1: 113 s
python train/self_ddo_sdar_full.py config=configs/t3d_chain.yaml experiment.start_from_scratch=true "model.pretrained_model=${ROOT}/models/sdar-chain" "dataset.optimization_data=${ROOT}/experiments/t3d_chain_v2/data/synthetic_chain_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=t3d_seed1 training.seed=1 training.num_threads=1

# train_t3d_seed2: 120 s
python train/self_ddo_sdar_full.py config=configs/t3d_chain.yaml experiment.start_from_scratch=true "model.pretrained_model=${ROOT}/models/sdar-chain" "dataset.optimization_data=${ROOT}/experiments/t3d_chain_v2/data/synthetic_chain_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=t3d_seed2 training.seed=2 training.num_threads=1

# train_ddo_only_seed0: 112 s
python train/self_ddo_sdar_full.py config=configs/t3d_chain.yaml experiment.start_from_scratch=true "model.pretrained_model=${ROOT}/models/sdar-chain" "dataset.optimization_data=${ROOT}/experiments/t3d_chain_v2/data/synthetic_chain_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=ddo_only_seed0 training.seed=0 training.num_threads=1 training.lambda_path=0.0

# train_path_only_seed0: 111 s
python train/self_ddo_sdar_full.py config=configs/t3d_chain.yaml experiment.start_from_scratch=true "model.pretrained_model=${ROOT}/models/sdar-chain" "dataset.optimization_data=${ROOT}/experiments/t3d_chain_v2/data/synthetic_chain_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=path_only_seed0 training.seed=0 training.num_threads=1 training.lambda_ddo=0.0

# train_random_masks_seed0: 112 s
python train/self_ddo_sdar_full.py config=configs/t3d_chain.yaml experiment.start_from_scratch=true "model.pretrained_model=${ROOT}/models/sdar-chain" "dataset.optimization_data=${ROOT}/experiments/t3d_chain_v2/data/synthetic_chain_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=random_masks_seed0 training.seed=0 training.num_threads=1 training.mask_strategy=random

# train_one_round_seed0: 115 s
python train/self_ddo_sdar_full.py config=configs/t3d_chain.yaml experiment.start_from_scratch=true "model.pretrained_model=${ROOT}/models/sdar-chain" "dataset.optimization_data=${ROOT}/experiments/t3d_chain_v2/data/synthetic_chain_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=one_round_seed0 training.seed=0 training.num_threads=1 training.multi_round=false

# train_t3d_beta1_seed0: 136 s
python train/self_ddo_sdar_full.py config=configs/t3d_chain.yaml experiment.start_from_scratch=true "model.pretrained_model=${ROOT}/models/sdar-chain" "dataset.optimization_data=${ROOT}/experiments/t3d_chain_v2/data/synthetic_chain_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=t3d_beta1_seed0 training.seed=0 training.num_threads=1 training.beta=1.0

# train_t3d_beta1_seed1: 142 s
python train/self_ddo_sdar_full.py config=configs/t3d_chain.yaml experiment.start_from_scratch=true "model.pretrained_model=${ROOT}/models/sdar-chain" "dataset.optimization_data=${ROOT}/experiments/t3d_chain_v2/data/synthetic_chain_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=t3d_beta1_seed1 training.seed=1 training.num_threads=1 training.beta=1.0

# train_t3d_beta1_seed2: 123 s
python train/self_ddo_sdar_full.py config=configs/t3d_chain.yaml experiment.start_from_scratch=true "model.pretrained_model=${ROOT}/models/sdar-chain" "dataset.optimization_data=${ROOT}/experiments/t3d_chain_v2/data/synthetic_chain_train_rollout_renamed.json" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=t3d_beta1_seed2 training.seed=2 training.num_threads=1 training.beta=1.0

# eval_test_static0: 366 s
python eval.py config=configs/eval.yaml "evaluation.eval_dataset=${ROOT}/data/synthetic_chain_test.json" evaluation.data_type=math rollout.block_size=8 rollout.temperature=0.0 rollout.max_token=80 rollout.seed=0 'sweep.denoising_steps=[8,4,2,1]' "sweep.checkpoints=[base=${ROOT}/models/sdar-chain,naive_seed1=${ROOT}/experiments/t3d_chain_v2/naive_seed1/ckpt/naive,t3d_seed0=${ROOT}/experiments/t3d_chain_v2/t3d_seed0/ckpt/optimized,t3d_seed2=${ROOT}/experiments/t3d_chain_v2/t3d_seed2/ckpt/optimized,path_only_seed0=${ROOT}/experiments/t3d_chain_v2/path_only_seed0/ckpt/optimized,one_round_seed0=${ROOT}/experiments/t3d_chain_v2/one_round_seed0/ckpt/optimized,t3d_beta1_seed1=${ROOT}/experiments/t3d_chain_v2/t3d_beta1_seed1/ckpt/optimized]" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=eval_test_static0 evaluation.num_threads=1

# eval_test_static1: 386 s
python eval.py config=configs/eval.yaml "evaluation.eval_dataset=${ROOT}/data/synthetic_chain_test.json" evaluation.data_type=math rollout.block_size=8 rollout.temperature=0.0 rollout.max_token=80 rollout.seed=0 'sweep.denoising_steps=[8,4,2,1]' "sweep.checkpoints=[naive_seed0=${ROOT}/experiments/t3d_chain_v2/naive_seed0/ckpt/naive,naive_seed2=${ROOT}/experiments/t3d_chain_v2/naive_seed2/ckpt/naive,t3d_seed1=${ROOT}/experiments/t3d_chain_v2/t3d_seed1/ckpt/optimized,ddo_only_seed0=${ROOT}/experiments/t3d_chain_v2/ddo_only_seed0/ckpt/optimized,random_masks_seed0=${ROOT}/experiments/t3d_chain_v2/random_masks_seed0/ckpt/optimized,t3d_beta1_seed0=${ROOT}/experiments/t3d_chain_v2/t3d_beta1_seed0/ckpt/optimized,t3d_beta1_seed2=${ROOT}/experiments/t3d_chain_v2/t3d_beta1_seed2/ckpt/optimized]" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=eval_test_static1 evaluation.num_threads=1

# eval_test_dynamic0: 364 s
python eval.py config=configs/eval.yaml "evaluation.eval_dataset=${ROOT}/data/synthetic_chain_test.json" evaluation.data_type=math rollout.block_size=8 rollout.temperature=0.0 rollout.max_token=80 rollout.seed=0 "sweep.checkpoints=[base=${ROOT}/models/sdar-chain,naive_seed1=${ROOT}/experiments/t3d_chain_v2/naive_seed1/ckpt/naive,t3d_seed0=${ROOT}/experiments/t3d_chain_v2/t3d_seed0/ckpt/optimized,t3d_seed2=${ROOT}/experiments/t3d_chain_v2/t3d_seed2/ckpt/optimized,path_only_seed0=${ROOT}/experiments/t3d_chain_v2/path_only_seed0/ckpt/optimized,one_round_seed0=${ROOT}/experiments/t3d_chain_v2/one_round_seed0/ckpt/optimized,t3d_beta1_seed1=${ROOT}/experiments/t3d_chain_v2/t3d_beta1_seed1/ckpt/optimized]" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=eval_test_dynamic0 evaluation.num_threads=1 'sweep.dynamic_thresholds=[0.99,0.95,0.9]' sweep.denoising_steps=null

# eval_test_dynamic1: 369 s
python eval.py config=configs/eval.yaml "evaluation.eval_dataset=${ROOT}/data/synthetic_chain_test.json" evaluation.data_type=math rollout.block_size=8 rollout.temperature=0.0 rollout.max_token=80 rollout.seed=0 "sweep.checkpoints=[naive_seed0=${ROOT}/experiments/t3d_chain_v2/naive_seed0/ckpt/naive,naive_seed2=${ROOT}/experiments/t3d_chain_v2/naive_seed2/ckpt/naive,t3d_seed1=${ROOT}/experiments/t3d_chain_v2/t3d_seed1/ckpt/optimized,ddo_only_seed0=${ROOT}/experiments/t3d_chain_v2/ddo_only_seed0/ckpt/optimized,random_masks_seed0=${ROOT}/experiments/t3d_chain_v2/random_masks_seed0/ckpt/optimized,t3d_beta1_seed0=${ROOT}/experiments/t3d_chain_v2/t3d_beta1_seed0/ckpt/optimized,t3d_beta1_seed2=${ROOT}/experiments/t3d_chain_v2/t3d_beta1_seed2/ckpt/optimized]" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=eval_test_dynamic1 evaluation.num_threads=1 'sweep.dynamic_thresholds=[0.99,0.95,0.9]' sweep.denoising_steps=null

# eval_ood_full0: 139 s
python eval.py config=configs/eval.yaml "evaluation.eval_dataset=${ROOT}/data/synthetic_chain_ood.json" evaluation.data_type=math rollout.block_size=8 rollout.temperature=0.0 rollout.max_token=80 rollout.seed=0 'sweep.denoising_steps=[8]' "sweep.checkpoints=[base=${ROOT}/models/sdar-chain,naive_seed1=${ROOT}/experiments/t3d_chain_v2/naive_seed1/ckpt/naive,t3d_seed0=${ROOT}/experiments/t3d_chain_v2/t3d_seed0/ckpt/optimized,t3d_seed2=${ROOT}/experiments/t3d_chain_v2/t3d_seed2/ckpt/optimized,path_only_seed0=${ROOT}/experiments/t3d_chain_v2/path_only_seed0/ckpt/optimized,one_round_seed0=${ROOT}/experiments/t3d_chain_v2/one_round_seed0/ckpt/optimized,t3d_beta1_seed1=${ROOT}/experiments/t3d_chain_v2/t3d_beta1_seed1/ckpt/optimized]" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=eval_ood_full0 evaluation.num_threads=1

# eval_ood_full1: 142 s
python eval.py config=configs/eval.yaml "evaluation.eval_dataset=${ROOT}/data/synthetic_chain_ood.json" evaluation.data_type=math rollout.block_size=8 rollout.temperature=0.0 rollout.max_token=80 rollout.seed=0 'sweep.denoising_steps=[8]' "sweep.checkpoints=[naive_seed0=${ROOT}/experiments/t3d_chain_v2/naive_seed0/ckpt/naive,naive_seed2=${ROOT}/experiments/t3d_chain_v2/naive_seed2/ckpt/naive,t3d_seed1=${ROOT}/experiments/t3d_chain_v2/t3d_seed1/ckpt/optimized,ddo_only_seed0=${ROOT}/experiments/t3d_chain_v2/ddo_only_seed0/ckpt/optimized,random_masks_seed0=${ROOT}/experiments/t3d_chain_v2/random_masks_seed0/ckpt/optimized,t3d_beta1_seed0=${ROOT}/experiments/t3d_chain_v2/t3d_beta1_seed0/ckpt/optimized,t3d_beta1_seed2=${ROOT}/experiments/t3d_chain_v2/t3d_beta1_seed2/ckpt/optimized]" "experiment.output_dir=${ROOT}/experiments/t3d_chain_v2" experiment.project=eval_ood_full1 evaluation.num_threads=1

"""Stage 4: few-step evaluation of block-diffusion checkpoints (accuracy beside decoding cost, sweeps, a plot).

    python eval.py config=configs/eval.yaml evaluation.checkpoint_path=<dir or hub id> \
        evaluation.eval_dataset=MATH500 evaluation.data_type=math rollout.denoising_steps_per_block=1
    python eval.py config=configs/eval.yaml 'sweep.denoising_steps=[4,2,1]'
    accelerate launch eval.py config=configs/eval.yaml ...      # decoding split across processes

Same as `t3d-eval`; --help lists the config keys.
"""
from t3d.commands import evaluate

if __name__ == "__main__":
    evaluate()

"""Stage 1: decode a dataset with many denoising steps and record every token's trajectory (step_map).

    cd sample && python sdar_sample.py config=../configs/sdar_sample.yaml evaluation.eval_dataset=MATH_train
    accelerate launch sample/sdar_sample.py config=configs/sdar_sample.yaml ...     # one process per GPU

Same as `t3d-sample`; --help lists the config keys.
"""
from t3d.commands import sample

if __name__ == "__main__":
    sample()

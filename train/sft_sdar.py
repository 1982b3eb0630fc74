"""Block-diffusion SFT of an SDAR model (from scratch or from a checkpoint).

    accelerate launch --config_file accelerate_configs/<...>.yaml train/sft_sdar.py config=configs/sft_sdar.yaml

Same as `t3d-sft`; --help lists the config keys.
"""
from t3d.commands import sft

if __name__ == "__main__":
    sft()

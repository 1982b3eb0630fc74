"""Stage 3: T3D training (DDO + path loss) on the model's own rollout trajectories.

    accelerate launch --config_file accelerate_configs/<...>.yaml train/self_ddo_sdar_full.py \
        config=configs/ddo_sdar_full_self.yaml

Same as `t3d-train`; --help lists the config keys.
"""
from t3d.commands import train

if __name__ == "__main__":
    train()

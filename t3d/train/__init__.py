"""Training: T3D (DDO + path loss) and SFT objectives, data, the loop, LoRA, checkpoints, training records."""

"""t3d: trajectory self-distillation (T3D) for block-diffusion language models (SDAR).

Sub-packages, lowest layer first; a module imports only from its own layer or lower ones:

    common        config parsing, atomic I/O, one-line errors, paths, process defaults
    tasks         prompts, answer extraction, dataset loading, the synthetic tasks
    model         the SDAR model code, attention masks, checkpoint finding/checking/loading/fingerprint
    decode        the block-diffusion decoder, the rollout job, shard merging
    train | eval  T3D/SFT training (losses, data, loop, LoRA) | evaluation, grading, AUP, the code sandbox
    integrations  lm-evaluation-harness model `sdar_bd`
    commands      the command-line entry points of every stage
"""
__version__ = "0.2.0"

LAYERS = ("common", "tasks", "model", "decode", ("train", "eval"), "integrations", "commands")

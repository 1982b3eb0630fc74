"""Process defaults for the toolkit's commands, applied when a command starts (never at import) and never
over a variable the user set."""
import os


def apply_defaults():
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would otherwise probe and warn
    os.environ.setdefault("WANDB_MODE", "disabled")  # never a login prompt; configs opt in to offline/online
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

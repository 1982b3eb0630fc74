"""Entry-script plumbing: parse `config=... key=value`, turn expected failures into one-line errors."""
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would otherwise probe and warn
os.environ.setdefault("WANDB_MODE", "disabled")  # never a login prompt; configs opt in to offline/online
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_main(job, argv=None):
    """Run `job(cfg)`; ConfigError / DataError / missing files exit 2 with one line on stderr
    (set T3D_DEBUG=1 for the traceback)."""
    from .config import ConfigError, load_config
    from .io import DataError

    try:
        return job(load_config(argv))
    except (ConfigError, DataError, FileNotFoundError) as err:
        if os.environ.get("T3D_DEBUG"):
            raise
        name = os.path.basename(sys.argv[0]) or "t3d"
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(2)

"""Entry-script plumbing: parse `config=... key=value`, turn expected failures into one-line errors."""
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would otherwise probe and warn
os.environ.setdefault("WANDB_MODE", "disabled")  # never a login prompt; configs opt in to offline/online
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def error_line(err):
    """One line for an expected failure; an OS error (full disk, read-only or missing path) names its file."""
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        return f"{err.strerror}{where}"
    return " ".join(str(err).split("\n")[0:1]) or type(err).__name__


def run_main(job, argv=None, default_config=None):
    """Run `job(cfg)`; ConfigError / DataError / OS errors (missing files, full disk, no permission)
    exit 2 with one line on stderr (set T3D_DEBUG=1 for the traceback). `--help` prints the keys of
    `default_config` (or of config=...) and exits 0."""
    from .config import ConfigError, load_config
    from .io import DataError

    try:
        return job(load_config(argv, default_config))
    except (ConfigError, DataError, OSError) as err:
        if os.environ.get("T3D_DEBUG"):
            raise
        name = os.path.basename(sys.argv[0]) or "t3d"
        print(f"{name}: error: {error_line(err)}", file=sys.stderr)
        sys.exit(2)

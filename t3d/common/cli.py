"""Entry-point plumbing shared by every stage: `config=... key=value` in, one-line errors out."""
import os
import sys

from t3d.common.errors import ExpectedError, error_line


def run_main(job, argv=None, default_config=None):
    """Run `job(cfg)` on the config parsed from argv (default sys.argv[1:]). Expected failures (config, data,
    checkpoint, a stopped run, missing or unwritable files) exit 2 with `<command>: error: <one line>` on
    stderr, printed by rank 0 only; T3D_DEBUG=1 shows the traceback instead. `--help` prints the keys of
    `default_config` (or of config=...) and exits 0."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    from t3d.common.config import load_config
    from t3d.common.env import apply_defaults

    try:
        cfg = load_config(argv, default_config)
        apply_defaults()
        return job(cfg)
    except (ConfigAttributeError, ConfigKeyError) as err:  # a config file that lacks a key the stage reads
        if os.environ.get("T3D_DEBUG"):
            raise
        key = getattr(err, "full_key", None) or str(err).splitlines()[0]
        _fail(f"the config has no key '{key}' (--help lists the keys of the stage's default config)")
    except (ExpectedError, OSError) as err:
        if os.environ.get("T3D_DEBUG"):
            raise
        _fail(error_line(err))


def _fail(line):
    """`<command>: error: <line>` on stderr (rank 0 only), the process group closed, exit 2."""
    if os.environ.get("RANK", "0") == "0":
        print(f"{os.path.basename(sys.argv[0]) or 't3d'}: error: {line}", file=sys.stderr)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(2)

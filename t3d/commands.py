"""Every stage's command: the console scripts of pyproject.toml and the repository's entry scripts call these.

The config-driven stages take `config=<yaml> key=value ...` (config= defaults to the stage's bundled config)
and answer `--help` before the heavy imports, so help is instant; the data tools take their own flags."""
import sys

from t3d.common.config import exit_if_help
from t3d.common.paths import CONFIGS


def _stage(module, job, config_name, argv):
    default = CONFIGS / config_name
    argv = sys.argv[1:] if argv is None else list(argv)
    exit_if_help(argv, default_config=default)
    if not any(arg.startswith("config=") for arg in argv):
        argv = [f"config={default}", *argv]
    from importlib import import_module

    from t3d.common.cli import run_main

    run_main(getattr(import_module(module), job), argv, default)  # (its result is not an exit status)


def sample(argv=None):
    """Stage 1, rollout: decode a dataset and record every token's denoising step (sdar_sample.py)."""
    _stage("t3d.decode.rollout", "run_rollout_job", "sdar_sample.yaml", argv)


def train(argv=None):
    """Stage 3, T3D training: DDO + path loss on the model's own trajectories (self_ddo_sdar_full.py)."""
    _stage("t3d.train.self_ddo", "run_t3d_job", "ddo_sdar_full_self.yaml", argv)


def sft(argv=None):
    """Block-diffusion SFT (sft_sdar.py)."""
    _stage("t3d.train.sft", "run_sft_job", "sft_sdar.yaml", argv)


def evaluate(argv=None):
    """Stage 4, few-step evaluation (eval.py)."""
    _stage("t3d.eval.evaluate", "run_eval_job", "eval.yaml", argv)


def _tool(module, argv):
    """A tool with its own flags: its module's main(argv) is the exit status."""
    from importlib import import_module

    sys.exit(import_module(module).main(argv))


def preprocess(argv=None):
    """Stage 2: rollout files -> training records (rename_key.py)."""
    _tool("t3d.train.records", argv)


def download(argv=None):
    """Fetch a dataset into the toolkit's schema (download_data.py)."""
    _tool("t3d.tasks.download", argv)


def merge_shards(argv=None):
    """Merge the per-node rollout files of a multi-node rollout."""
    _tool("t3d.decode.shards", argv)


def build_tiny(argv=None):
    """Write a small random SDAR checkpoint with the toolkit's tokenizer."""
    _tool("t3d.model.tiny", argv)


def view(argv=None):
    """Show one response's decode order in the terminal and as an HTML page."""
    _tool("t3d.decode.view", argv)


def export(argv=None):
    """Copy a checkpoint as a standalone model with a model card; optionally push it to the hub."""
    _tool("t3d.model.publish", argv)


def lm_eval(argv=None):
    """lm-evaluation-harness's own command line with the `sdar_bd` model registered."""
    _tool("t3d.integrations.lm_eval", argv)

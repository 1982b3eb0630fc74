"""A random-weight checkpoint with the real SDAR-4B-Chat release files (config with 1 layer, tokenizer, chat
template, generation config, sharded safetensors under the release's tensor names), built once per test session.

The release files live beside the checkout (../shared/sdar-release-files, as CI provides them); without them the
tests that need them skip, saying where the files were looked for."""
import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import pytest

RELEASE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "sdar-release-files" / "SDAR-4B-Chat"


def require_release():
    if not (RELEASE_DIR / "config.json").is_file():
        pytest.skip(f"the SDAR-4B-Chat release files are not at {RELEASE_DIR} (../shared/sdar-release-files "
                    "beside the checkout)")
    return RELEASE_DIR


@functools.cache
def release_checkpoint(layers=1):
    """Path of the checkpoint (about 1.8 GB of bf16 with 1 layer: the embedding and head dominate); removed at exit."""
    from t3d.model.random_release import build_random_checkpoint

    root = Path(tempfile.mkdtemp(prefix="sdar4b-release-shape-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return build_random_checkpoint(require_release(), root / f"layers{layers}", layers)


@pytest.fixture(scope="module")
def ckpt():
    """The 1-layer checkpoint, for the tests that import this fixture (skips without the release files)."""
    return release_checkpoint(1)

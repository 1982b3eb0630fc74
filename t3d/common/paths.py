"""Where inputs are looked up and outputs go.

HOME holds the bundled configs/, models/ (the embedded default checkpoints) and data/ (the shipped splits):
the source checkout when t3d runs from one (an editable install or a plain checkout), else the copy installed
with the package. Relative input paths resolve against the current directory first, then HOME. Outputs whose
config says `output_dir: null` go to the checkout root in a checkout (so `cd sample && python sdar_sample.py`
writes beside the repository's other results, as the original did) and to the current directory otherwise."""
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
_ROOT = PACKAGE_DIR.parent
CHECKOUT = _ROOT if (_ROOT / "pyproject.toml").is_file() and (_ROOT / "configs").is_dir() else None
HOME = CHECKOUT or PACKAGE_DIR / "_bundle"
CONFIGS = HOME / "configs"
MODELS = HOME / "models"
DATA = HOME / "data"


def output_root():
    """The folder a relative or unset `experiment.output_dir` is taken from."""
    return CHECKOUT or Path.cwd()

"""Download a Gen-Verse dataset JSON from the Hugging Face hub into data/{name}.json.

    cd data && python download_data.py --dataset MATH_train

The file always lands next to this script (or in --out_dir), whatever the CWD. It is validated as a
JSON list of objects with a `question` before it replaces anything, and written atomically, so a
failed or interrupted download never leaves a partial file. Offline (no network, or HF_HUB_OFFLINE=1
with nothing cached) it fails at once with one line saying which file to place where.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.io import DataError, atomic_write_text  # noqa: E402

DATA_DIR = Path(__file__).resolve().parent
DATASETS = ("PrimeIntellect", "MATH_train", "MATH500", "GSM8K", "MBPP", "HumanEval")
TRAIN_SPLIT = ("PrimeIntellect", "MATH_train")  # the others are published under test/
TIMEOUT_S = 10  # metadata request timeout: an unreachable hub fails fast instead of hanging


def hub_location(name):
    """(repo_id, filename inside the dataset repo) for a dataset name."""
    split = "train" if name in TRAIN_SPLIT else "test"
    return f"Gen-Verse/{name}", f"{split}/{name}.json"


def validated_text(path, source):
    """The file's text if it is a non-empty JSON list of objects that all carry `question`."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{source}: not valid JSON (line {err.lineno} col {err.colno}: {err.msg})") from None
    if not isinstance(data, list) or not data:
        raise DataError(f"{source}: expected a non-empty JSON list of objects, got {type(data).__name__}")
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "question" not in item:
            raise DataError(f"{source}: item {i} is not an object with a 'question' key")
    return text, len(data)


def hub_reachable():
    """One quick request to the hub endpoint (hf_hub_download itself retries for ~25 s when offline)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=TIMEOUT_S)
    except Exception:  # DNS failure, refused connection, timeout, proxy error
        return False
    return True


def download(name, out_dir=DATA_DIR):
    """Fetch `name` through the hub cache, validate it, and write out_dir/{name}.json -> (path, #items)."""
    import huggingface_hub

    repo_id, filename = hub_location(name)
    dest = Path(out_dir) / f"{name}.json"
    online = hub_reachable()
    try:
        # Unreachable hub: still serve a copy from the local hub cache, but never wait on retries.
        cached = huggingface_hub.hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset",
                                                 etag_timeout=TIMEOUT_S, local_files_only=not online)
    except Exception as err:  # offline, unreachable, missing repo/file, auth: all end the same way
        if online:
            lines = str(err).strip().splitlines()
            why = f"{type(err).__name__}: {lines[0][:120]}" if lines else type(err).__name__
        else:
            why = "hub unreachable or HF_HUB_OFFLINE=1, and not in the local hub cache"
        raise DataError(f"could not download {filename} from the hub dataset {repo_id} ({why}); "
                        f"fetch it on a machine with network and place it at {dest}") from None
    text, n = validated_text(cached, f"{repo_id}/{filename}")
    atomic_write_text(dest, text)
    return dest, n


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--out_dir", default=str(DATA_DIR), help="destination folder (default: this script's folder)")
    args = parser.parse_args(argv)
    try:
        dest, n = download(args.dataset, args.out_dir)
    except DataError as err:
        print(f"download_data.py: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {dest} ({n} items)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

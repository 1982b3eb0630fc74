"""Fetch a dataset with Hugging Face `datasets` and save it as data/{name}.json in the toolkit's schema.

    cd data && python download_data.py --dataset MATH_train      # a Gen-Verse set -> data/MATH_train.json
    python data/download_data.py --source hub:openai/gsm8k --subset main --split test \\
        --columns question=question,ground_truth_answer=answer --answer_format gsm8k --name gsm8k_test

`--source` takes any dataset spec of the toolkit (hub:<owner>/<name>, or a local .json/.jsonl/.parquet/.csv
file) and the column mapping of evaluation.dataset_columns. The file always lands next to this script
(or in --out_dir), whatever the CWD. The items are checked (a non-empty list of objects with a string
`question`) before anything is replaced, and written atomically, so a failed or interrupted run never
leaves a partial file. Offline (no network, or HF_HUB_OFFLINE=1 with nothing cached) it fails at once
with one line.
"""
import argparse
import sys
from pathlib import Path

from t3d.tasks.loading import ANSWER_FORMATS, HUB_PREFIX, apply_columns, load_records, read_hub
from t3d.common.paths import DATA
from t3d.common.io import DataError, atomic_write_json

DATA_DIR = DATA
DATASETS = ("PrimeIntellect", "MATH_train", "MATH500", "GSM8K", "MBPP", "HumanEval")
TRAIN_SPLIT = ("PrimeIntellect", "MATH_train")  # the others are published under test/


def hub_location(name):
    """(repo_id, filename inside the dataset repo) for a Gen-Verse dataset name."""
    split = "train" if name in TRAIN_SPLIT else "test"
    return f"Gen-Verse/{name}", f"{split}/{name}.json"


def check_items(items, source):
    """Items the toolkit can decode: each an object with a non-empty string `question`."""
    for i, item in enumerate(items):
        question = item.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{source}: item {i} has no string 'question' (columns: {', '.join(item)}); "
                            "map one with --columns question=<column>")
    return items


def parse_columns(text):
    """`question=problem,ground_truth_answer=answer` -> {"question": "problem", ...}."""
    if not text:
        return None
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise DataError(f"--columns '{text}': expected key=column[,key=column...], e.g. question=problem")
    return {k.strip(): v.strip() for k, v in pairs}


def fetch(args):
    """(name, source, items) for the command line's dataset."""
    columns = parse_columns(args.columns)
    if args.dataset:
        repo_id, filename = hub_location(args.dataset)
        source, items = read_hub(repo_id, data_files=filename, key_prefix="--")
        if not items:
            raise DataError(f"{source}: dataset is empty")
        return args.dataset, source, apply_columns(items, source, columns or {}, args.answer_format, "--")
    source, items = load_records(args.source, split=args.split, subset=args.subset, columns=columns,
                                 answer_format=args.answer_format, key_prefix="--")
    return args.name, source, items


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--dataset", choices=DATASETS, help="a Gen-Verse dataset (saved as data/<dataset>.json)")
    what.add_argument("--source", help=f"any dataset spec: {HUB_PREFIX}<owner>/<name> or a local file (needs --name)")
    parser.add_argument("--name", help="output name with --source: writes <out_dir>/<name>.json")
    parser.add_argument("--subset", help="hub config, e.g. main for hub:openai/gsm8k")
    parser.add_argument("--split", help="hub split, e.g. test (default: the only one)")
    parser.add_argument("--columns", help="toolkit key=source column pairs, e.g. question=problem,ground_truth_answer=answer")
    parser.add_argument("--answer_format", choices=ANSWER_FORMATS, help="gsm8k: ground_truth_answer '... #### 42' -> '42'")
    parser.add_argument("--out_dir", default=str(DATA_DIR), help="destination folder (default: this script's folder)")
    args = parser.parse_args(argv)
    if args.source and not args.name:
        parser.error("--source needs --name (the output is <out_dir>/<name>.json)")
    if args.dataset and (args.subset or args.split):
        parser.error("--subset / --split go with --source; a Gen-Verse --dataset is one file")
    try:
        name, source, items = fetch(args)
        dest = Path(args.out_dir) / f"{name}.json"
        atomic_write_json(dest, check_items(items, source))
    except (DataError, OSError) as err:
        print(f"download_data.py: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {dest} ({len(items)} items from {source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Turn rollout files (sample/sdar_sample.py output) into flat T3D training records, one per replica.

    cd data && python rename_key.py --model_name SDAR-4B-Chat --dataset MATH_train
        reads  data/SDAR-4B-Chat-MATH_train.json
        writes data/SDAR-4B-Chat-MATH_train_renamed.json
    python data/rename_key.py --input shard0.json --input shard1.jsonl --output data/merged_renamed.json

Default paths are relative to this script's folder (works from any CWD); --input/--output are taken as
given. Every replica becomes its own record (the original kept only replica 0, wasting the others):

    {"question", "prompt", "answer": <decoded text of that replica>, "response_ids": [...],
     "step_map": [...], "source_index": i, "replica": r, <other dataset fields>,
     <per-replica rollout scalars that are present: extracted_output, response_length, nfe, finished, correctness>}

`source_index` counts items across all inputs in the order given. A dataset field whose name clashes
with a record key is kept as `original_<name>`. The rollout's settings `block_size`,
`denoising_steps_per_block` and `remasking_strategy` are copied into every record (training checks them).
Invalid replicas are dropped and counted by reason (`--strict` makes the first one an error), among them
a step_map value no decoding can produce: < 1, or, with the settings known, more than S steps per block
over the blocks the response can span; an empty result is an error and leaves no output file.
"""
import argparse
import sys
from collections import Counter
from pathlib import Path

from t3d.common.paths import DATA
from t3d.common.io import DataError, atomic_write_json, read_records
from t3d.decode.shards import check_inputs, check_unique_ids
from t3d.tasks.loading import invalid_text

DATA_DIR = DATA
# Rollout keys holding one value per replica; each record gets its replica's value.
PER_REPLICA = ("full_output", "response_ids", "step_map", "extracted_output", "response_length", "nfe", "finished",
               "correctness", "execution_result")
CARRIED_PER_REPLICA = ("extracted_output", "response_length", "nfe", "finished", "correctness", "execution_result")
RECORD_KEYS = ("question", "prompt", "answer", "response_ids", "step_map", "source_index", "replica")
ROLLOUT_SETTINGS = ("block_size", "denoising_steps_per_block", "remasking_strategy")  # item-level, copied as is


def _int_list(value):
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def max_step(n, block_size, steps_per_block, prompt_len=None):
    """(largest step a response of n tokens can carry, blocks it spans): S steps per block, blocks aligned to
    absolute positions, so the response's first block also holds prompt_len % B prompt tokens (up to B - 1
    when the prompt length is not known). Steps are numbered globally from 1."""
    offset = block_size - 1 if prompt_len is None else prompt_len % block_size
    blocks = -(-(offset + n) // block_size)
    return steps_per_block * blocks, blocks


def steps_problem(step_map, block_size, steps_per_block):
    """Why a step_map cannot come from the decoder, or None (the prompt length is not known here)."""
    if min(step_map) < 1:
        return "step_map value < 1"
    if _positive_int(block_size) and _positive_int(steps_per_block):
        if max(step_map) > max_step(len(step_map), block_size, steps_per_block)[0]:
            return "step_map value > the steps its blocks allow"
    return None


def replica_problem(question, prompt, answer, response_ids, step_map, settings=None):
    """The reason a replica cannot be trained on, or None. `settings`: the item's rollout settings."""
    if not isinstance(question, str) or not question.strip():
        return "question missing or empty"
    if any(invalid_text(v) for v in (question, prompt, answer)):
        return "text holds an unpaired surrogate (not valid Unicode)"
    if not isinstance(prompt, str):
        return "prompt missing or not a string"
    if not isinstance(answer, str):
        return "answer text missing"
    if not _int_list(response_ids) or not response_ids:
        return "response_ids missing, empty or not ints"
    if not _int_list(step_map):
        return "step_map missing or not ints"
    if len(step_map) != len(response_ids):
        return "step_map length != response_ids length"
    settings = settings or {}
    for key in ("block_size", "denoising_steps_per_block"):
        if settings.get(key) is not None and not _positive_int(settings[key]):
            return f"{key} not a positive integer"
    return steps_problem(step_map, settings.get("block_size"), settings.get("denoising_steps_per_block"))


def _at(values, r):
    return values[r] if isinstance(values, list) and r < len(values) else None


def item_records(item, source_index):
    """Yield (record or None, drop reason or None) for every replica of one rollout item."""
    lists = [item.get(k) for k in ("full_output", "response_ids", "step_map")]
    n_replicas = max((len(v) for v in lists if isinstance(v, list)), default=1)
    settings, base = {k: item.get(k) for k in ROLLOUT_SETTINGS}, {}
    for key, value in item.items():  # dataset fields and the rollout settings, copied into every record
        if key in PER_REPLICA or key == "prompt":
            continue
        base[f"original_{key}" if key in RECORD_KEYS and key != "question" else key] = value
    for r in range(n_replicas):
        answer, ids, steps = (_at(v, r) for v in lists)
        reason = replica_problem(item.get("question"), item.get("prompt"), answer, ids, steps, settings)
        if reason:
            yield None, reason
            continue
        record = {"question": item["question"], "prompt": item["prompt"], "answer": answer, "response_ids": ids,
                  "step_map": steps, "source_index": source_index, "replica": r}
        for key, value in base.items():
            record.setdefault(key, value)
        for key in CARRIED_PER_REPLICA:
            if isinstance(item.get(key), list) and r < len(item[key]):
                record[key] = item[key][r]
        yield record, None


def convert(inputs, strict=False):
    """Rollout files -> (records, number of items, Counter of drop reasons). Raises DataError."""
    records, dropped, n_items = [], Counter(), 0
    loaded = [(path, read_records(path)) for path in inputs]
    check_unique_ids(loaded)
    for path, items in loaded:
        for i, item in enumerate(items):
            for r, (record, reason) in enumerate(item_records(item, n_items)):
                if reason:
                    if strict:
                        raise DataError(f"{path}: item {i} replica {r}: {reason}")
                    dropped[reason] += 1
                else:
                    records.append(record)
            n_items += 1
    return records, n_items, dropped


def summary(n_records, n_items, dropped):
    reasons = ", ".join(f"{reason}: {count}" for reason, count in dropped.most_common())
    total = sum(dropped.values())
    return f"kept {n_records} records from {n_items} items; dropped {total}" + (f": {reasons}" if total else "")


def default_paths(model_name, dataset):
    stem = f"{model_name}-{dataset}"
    return [DATA_DIR / f"{stem}.json"], DATA_DIR / f"{stem}_renamed.json"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name", default="sdar-tiny", help="rollout model name in the default file name")
    parser.add_argument("--dataset", default="synthetic_math_train", help="dataset name in the default file name")
    parser.add_argument("--input", action="append", help="rollout file (JSON list or JSONL); repeat to merge shards")
    parser.add_argument("--output", help="training-record file to write")
    parser.add_argument("--strict", action="store_true", help="fail on the first invalid replica instead of dropping it")
    args = parser.parse_args(argv)

    inputs, output = default_paths(args.model_name, args.dataset)
    if args.input:
        inputs = [Path(p) for p in args.input]
        output = inputs[0].with_name(f"{inputs[0].stem}_renamed.json")
    if args.output:
        output = Path(args.output)
    try:
        check_inputs(inputs, output)
        records, n_items, dropped = convert(inputs, args.strict)
        if not records:
            raise DataError(f"{', '.join(map(str, inputs))}: no valid training records ({summary(0, n_items, dropped)})")
    except DataError as err:
        print(f"rename_key.py: error: {err}", file=sys.stderr)
        return 1
    try:
        atomic_write_json(output, records, indent=None)  # compact: records carry long id lists
    except OSError as err:  # a file in the way, no permission, a full disk: the temp file is gone
        reason = err.strerror or type(err).__name__
        print(f"rename_key.py: error: cannot write {output}: {reason}"
              f"{f' ({err.filename})' if err.filename and str(err.filename) != str(output) else ''}", file=sys.stderr)
        return 1
    print(summary(len(records), n_items, dropped))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

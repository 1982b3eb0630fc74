"""Merge the per-node rollout files of a `evaluation.num_node=N` run into one file, in dataset order.

    python utils/merge_shards.py --output merged.json outputs-0-eval-M-D.json outputs-1-eval-M-D.json ...
"""
import argparse
import sys
from pathlib import Path

from t3d.common.io import DataError, atomic_write_json, read_records


def check_inputs(inputs, output):
    """Refuse a rollout file given twice, or an output that would overwrite one of the inputs."""
    seen = {}
    for path in map(Path, inputs):
        key = path.resolve()
        if key in seen:
            raise DataError(f"{path}: given twice (as {seen[key]}); each rollout file counts once")
        seen[key] = path
    if output is not None and Path(output).resolve() in seen:
        raise DataError(f"{output}: the output is also an input; write the result to another file")


def check_unique_ids(items_by_path):
    """Refuse an item id that appears twice: overlapping shards, or one rollout file merged with itself."""
    where = {}
    for path, items in items_by_path:
        for i, item in enumerate(items):
            item_id = item.get("id") if isinstance(item, dict) else None
            if item_id is None:
                continue
            if item_id in where:
                raise DataError(f"{path}: item {i} has the id {item_id!r} already seen in {where[item_id]} "
                                "(overlapping rollout files)")
            where[item_id] = f"{path} item {i}"


def merge(paths):
    """Shards must be given in node order (outputs-0-..., outputs-1-..., ...); names are checked."""
    def node(path):
        parts = Path(path).name.split("-")
        return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None

    nodes = [node(p) for p in paths]
    if None not in nodes:
        order = sorted(range(len(paths)), key=nodes.__getitem__)
        paths = [paths[i] for i in order]
        if sorted(nodes) != list(range(len(paths))):
            raise DataError(f"shards {sorted(nodes)} are not a complete set 0..{len(paths) - 1}")
    runs = {Path(p).name.split("-eval-", 1)[1] for p in paths if "-eval-" in Path(p).name}
    if len(runs) > 1:  # outputs-<node>-eval-<checkpoint>-<dataset>.json of other checkpoints or datasets
        raise DataError(f"shards of different runs ({', '.join(sorted(runs))}); merge the shards of one run only")
    loaded = [(path, read_records(path)) for path in paths]
    check_unique_ids(loaded)
    merged = [item for _, items in loaded for item in items]
    decoded = {(item.get("block_size"), item.get("denoising_steps_per_block"), item.get("remasking_strategy"))
               for item in merged if "error" not in item}
    if len(decoded) > 1:  # shards of other runs: training would mix trajectories of other block sizes
        shown = ", ".join(f"B={b} S={s} {r}" for b, s, r in sorted(decoded, key=str))
        raise DataError(f"shards were decoded with different settings ({shown}); merge shards of one run only")
    return merged


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shards", nargs="+")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    try:
        check_inputs(args.shards, args.output)
        merged = merge(args.shards)
        atomic_write_json(args.output, merged)
    except DataError as err:
        sys.exit(f"merge_shards.py: error: {err}")
    except OSError as err:  # output under a file, read-only directory, full disk
        sys.exit(f"merge_shards.py: error: {err.strerror or err}: {err.filename or args.output}")
    print(f"merged {len(args.shards)} shards, {len(merged)} items -> {args.output}")


if __name__ == "__main__":
    main()

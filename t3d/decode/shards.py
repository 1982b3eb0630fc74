"""Merge the per-node rollout files of a `evaluation.num_node=N` run into one file, in dataset order.

    python utils/merge_shards.py --output merged.json outputs-0-eval-M-D.json outputs-1-eval-M-D.json ...
"""
import argparse
import sys
from pathlib import Path

from t3d.common.io import DataError, atomic_write_json, read_records


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
    merged = []
    for path in paths:
        merged.extend(read_records(path))
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
        merged = merge(args.shards)
        atomic_write_json(args.output, merged)
    except DataError as err:
        sys.exit(f"merge_shards.py: error: {err}")
    except OSError as err:  # output under a file, read-only directory, full disk
        sys.exit(f"merge_shards.py: error: {err.strerror or err}: {err.filename or args.output}")
    print(f"merged {len(args.shards)} shards, {len(merged)} items -> {args.output}")


if __name__ == "__main__":
    main()

"""Merge the per-node rollout files of a multi-node rollout into one file (same as `t3d-merge-shards`).

    python utils/merge_shards.py outputs-0-eval-*.json outputs-1-eval-*.json --output merged.json
"""
from t3d.commands import merge_shards

if __name__ == "__main__":
    merge_shards()

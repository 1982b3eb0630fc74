"""Stage 2: rollout files -> T3D training records, one per replica.

    cd data && python rename_key.py --model_name SDAR-4B-Chat --dataset MATH_train
    python data/rename_key.py --input shard0.json --input shard1.jsonl --output data/merged_renamed.json

Same as `t3d-preprocess`; --help lists the flags.
"""
from t3d.commands import preprocess

if __name__ == "__main__":
    preprocess()

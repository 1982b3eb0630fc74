"""Write a small random SDAR checkpoint with the toolkit's tokenizer (same as `t3d-build-tiny`).

    python utils/build_tiny_sdar.py --out models/my-tiny --seed 0
"""
from t3d.commands import build_tiny

if __name__ == "__main__":
    build_tiny()

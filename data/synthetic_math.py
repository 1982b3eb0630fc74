"""Regenerate the shipped synthetic_math splits (the embedded default task): python data/synthetic_math.py --help"""
from t3d.tasks.synthetic_math import main

if __name__ == "__main__":
    main()

"""Regenerate the shipped synthetic_chain splits (the chain task): python data/synthetic_chain.py --help"""
from t3d.tasks.synthetic_chain import main

if __name__ == "__main__":
    main()

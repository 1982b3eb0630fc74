"""Fetch a dataset with Hugging Face `datasets` into data/<name>.json (the toolkit's schema).

    cd data && python download_data.py --dataset MATH_train
    python data/download_data.py --source hub:openai/gsm8k --subset main --split test --name gsm8k_test

Same as `t3d-download`; --help lists the flags.
"""
from t3d.commands import download

if __name__ == "__main__":
    download()

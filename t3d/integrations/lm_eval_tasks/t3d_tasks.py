"""Helpers for lm-eval task YAMLs over the toolkit's datasets: the same items, prompt and grader as eval.py.

Loaded by lm-eval from the YAMLs next to this file (`!function t3d_tasks.<name>`), so it puts the repository
root on sys.path itself.
"""

from t3d.eval.grading import grade_items
from t3d.tasks.prompting import user_message
from t3d.decode.rollout import load_items


def load_toolkit_dataset(dataset, max_items=None, split=None, subset=None, columns=None, answer_format=None,
                         **_metadata):
    """`custom_dataset`: a toolkit dataset (a data/<name> name, a .json/.jsonl/.parquet/.csv path or
    hub:<owner>/<name>, as eval.py resolves it) as the test split; `dataset_kwargs` split, subset, columns,
    answer_format are eval.py's evaluation.dataset_* settings. lm-eval also passes its metadata (model_args
    among it) as keyword arguments; they are not ours."""
    import datasets

    _, items = load_items(dataset, max_items, split=split, subset=subset, columns=columns, answer_format=answer_format,
                          key_prefix="dataset_kwargs.")
    return {"test": datasets.Dataset.from_list(items)}


def math_user_message(doc):
    """The user turn eval.py puts in the chat template (with --apply_chat_template the prompts are equal)."""
    return user_message(doc, "math")


def process_math_results(doc, results):
    """eval.py's grading: the last \\boxed{} answer against `ground_truth_answer` with math-verify."""
    return {"accuracy": float(grade_items([{**doc, "full_output": [results[0]]}], "math")[0][0])}

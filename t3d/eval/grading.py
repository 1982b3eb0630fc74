"""Grading: math (math-verify), multiple choice, code (sandboxed tests), pass@k.

Math equivalence is decided by `math_verify` (LaTeX and plain-number parsing into sympy, then numeric /
symbolic comparison), with a fast exact path for plain numbers (GSM8K: "1,234" == "1234", "72.0" == "72").
math_verify bounds parsing and comparison with `signal.alarm`, which only works in the main thread: call
`grade_math` / `grade_items` from the main thread. In any other thread the comparison runs without a time
limit (a warning is logged once); over-long answers are compared as strings in every thread.
"""
import logging
import re
import threading
from decimal import Decimal, InvalidOperation
from functools import lru_cache

import numpy as np

from t3d.eval import sandbox
from t3d.common.io import DataError
from t3d.tasks.answers import NO_ANSWER, NO_CODE, extract_answer, last_boxed
from t3d.tasks.prompting import DATA_TYPES

logger = logging.getLogger(__name__)

MATH_TIMEOUT_S = 2  # per math_verify parse / comparison (signal.alarm takes whole seconds)
MAX_ANSWER_CHARS = 1000  # longer answers are garbage or pathological: exact string comparison only


# ---------------------------------------------------------------------------------------------------- math
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")
_THIN_SPACE_THOUSANDS = re.compile(r"(?<=\d)\\[,;: ](?=\d{3}\b)")
_warned_thread = False


def _plain_number(text):
    text = text.strip().removeprefix("\\$").removeprefix("$").strip()
    if not _PLAIN_NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def _gold_answer(gold):
    gold = str(gold)
    if "\\boxed" in gold or "\\fbox" in gold:
        return last_boxed(gold) or ""
    if "####" in gold:  # GSM8K solution text: the answer follows the last "####"
        return gold.rsplit("####", 1)[1]
    return gold


def _balanced(text):
    depth = 0
    for ch in text:
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            return False
    return depth == 0


def _math_timeout():
    global _warned_thread
    if threading.current_thread() is threading.main_thread():
        return MATH_TIMEOUT_S
    if not _warned_thread:
        logger.warning("grade_math called outside the main thread: math_verify runs without its time limit")
        _warned_thread = True
    return None


@lru_cache(maxsize=8192)
def _parse(answer, timeout):
    from math_verify import parse  # imported lazily: pulls in sympy (~0.3 s)

    return tuple(parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout))


def grade_math(pred, gold):
    """True iff `pred` (an extracted answer) is mathematically equal to `gold` (raw or `\\boxed{}`).

    Never raises: None, empty, sentinel, unbalanced or unparsable predictions are graded False.
    """
    try:
        if pred is None or gold is None or pred == NO_ANSWER:
            return False
        pred, gold = str(pred).strip(), _gold_answer(gold).strip()
        if not pred or not gold or not _balanced(pred):
            return False
        pred_num, gold_num = _plain_number(pred), _plain_number(gold)
        if pred_num is not None and gold_num is not None:
            return pred_num == gold_num
        if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
            return pred == gold
        pred, gold = _THIN_SPACE_THOUSANDS.sub("", pred), _THIN_SPACE_THOUSANDS.sub("", gold)
        from math_verify import verify

        timeout = _math_timeout()
        gold_parsed, pred_parsed = _parse(gold, timeout), _parse(pred, timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=timeout))
    except Exception as err:  # grading must never take the evaluation down
        logger.debug("grade_math(%r, %r) failed: %s", pred, gold, err)
        return False


# -------------------------------------------------------------------------------------------------- option
_LATEX_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm)\s*\{([^{}]*)\}")
_OPTION = re.compile(r"\(?\s*([A-Da-d])\s*\)?\s*[.:]?")


def _option_letter(answer):
    if answer is None:
        return None
    text = str(answer).strip().strip("$").strip()
    while True:  # unwrap \text{...}, \textbf{...}, ... (possibly nested)
        unwrapped = _LATEX_WRAPPER.sub(r"\1", text)
        if unwrapped == text:
            break
        text = unwrapped
    match = _OPTION.fullmatch(text.strip())
    return match.group(1).upper() if match else None


def grade_option(pred, gold):
    """True iff both name the same choice letter A-D; tolerant of "(B)", "B.", "B:", "\\text{B}", "b"."""
    pred_letter, gold_letter = _option_letter(pred), _option_letter(_gold_answer(gold) if gold is not None else None)
    return pred_letter is not None and pred_letter == gold_letter


# --------------------------------------------------------------------------------------------------- pass@k
def pass_at_k(n, c, k):
    """Unbiased pass@k (Chen et al., 2021): 1 - C(n-c, k) / C(n, k), elementwise over items.

    n: samples per item, c: correct samples per item (scalars or arrays), k <= min(n). Computed as
    1 - prod_{j=n-c+1}^{n} (1 - k/j) through cumulative log-sums, so no loop over items.
    Returns a float for scalar inputs, else an array.
    """
    n_arr, c_arr = np.broadcast_arrays(np.asarray(n, dtype=np.int64), np.asarray(c, dtype=np.int64))
    if np.any(c_arr < 0) or np.any(c_arr > n_arr):
        raise ValueError("pass_at_k: need 0 <= c <= n for every item")
    if k < 1 or np.any(n_arr < k):
        raise ValueError(f"pass_at_k: need 1 <= k <= n for every item (k={k}, min n={n_arr.min()})")
    top = int(n_arr.max())
    j = np.arange(1, top + 1, dtype=np.float64)
    # cum[m] = sum_{j=k+1}^{m} log(1 - k/j); terms with j <= k never enter (those items give 1.0).
    logs = np.where(j > k, np.log(np.clip(1.0 - k / j, 1e-300, None)), 0.0)
    cum = np.concatenate([[0.0], np.cumsum(logs)])
    lower = np.maximum(n_arr - c_arr, k)
    result = np.where(n_arr - c_arr < k, 1.0, 1.0 - np.exp(cum[n_arr] - cum[lower]))
    return float(result) if result.ndim == 0 else result


# ---------------------------------------------------------------------------------------------------- items
def _predictions(item, index, data_type):
    outputs = item.get("full_output")
    extracted = item.get("extracted_output")
    if isinstance(extracted, list) and (not isinstance(outputs, list) or len(extracted) == len(outputs)):
        return [NO_CODE if data_type == "code" and x is None else x for x in extracted]
    if not isinstance(outputs, list):
        raise DataError(f"item {index}: needs 'full_output' (list of responses) or 'extracted_output' to grade")
    return [extract_answer(o, item, data_type) for o in outputs]


def _gold_of(item, index, data_type):
    gold = item.get("ground_truth_answer")
    if gold is None or (isinstance(gold, str) and not gold.strip()):
        raise DataError(f"item {index}: no 'ground_truth_answer' to grade against (data_type={data_type})")
    return gold


def code_tests(item, index):
    """(kind, payload) for one code item: ("function", (tests, setup)) or ("stdio", (inputs, outputs)).

    function: MBPP `test_list` (statements, usually asserts; `test_setup_code` / `test_imports` run first),
    or HumanEval `test` + `entry_point` (one test: the `check` definition, then `check(entry_point)`).
    """
    method = item.get("test_method", "function")
    if method == "stdio":
        inputs, outputs = item.get("test_input"), item.get("test_output")
        if not isinstance(inputs, list) or not isinstance(outputs, list) or not inputs:
            raise DataError(f"item {index}: stdio code item needs non-empty 'test_input' and 'test_output' lists")
        if len(inputs) != len(outputs):
            raise DataError(
                f"item {index}: 'test_input' has {len(inputs)} cases but 'test_output' has {len(outputs)}"
            )
        return "stdio", ([str(x) for x in inputs], [str(x) for x in outputs])
    if method != "function":
        raise DataError(f"item {index}: unknown test_method '{method}': expected 'function' or 'stdio'")
    setup_parts = item.get("test_imports") or []
    setup_parts = [setup_parts] if isinstance(setup_parts, str) else list(setup_parts)
    setup = "\n".join([*setup_parts, item.get("test_setup_code") or ""]).strip()
    tests = item.get("test_list")
    if isinstance(tests, list) and tests:
        return "function", ([str(t) for t in tests], setup)
    if item.get("test") and item.get("entry_point"):
        return "function", ([f"{item['test']}\ncheck({item['entry_point']})"], setup)
    raise DataError(f"item {index}: function code item needs a non-empty 'test_list' or 'test' + 'entry_point'")


def run_code_items(items, predictions=None, *, timeout=None, memory_mb=sandbox.DEFAULT_MEMORY_MB, workers=None):
    """Per item, per response, per test: did it pass? (list[list[list[bool]]]).

    `predictions` (per item, per response code strings) defaults to `extracted_output` / extraction from
    `full_output`. `timeout` (seconds of user-code time per process) defaults to the item's
    `test_time_limit`, else sandbox.DEFAULT_TIMEOUT_S. Unextractable code fails every test without running.
    """
    specs = [code_tests(item, i) for i, item in enumerate(items)]
    if predictions is None:
        predictions = [_predictions(item, i, "code") for i, item in enumerate(items)]
    jobs, where = [], []
    results = []
    for i, (item, (kind, payload), codes) in enumerate(zip(items, specs, predictions)):
        n_tests = len(payload[0])
        results.append([[False] * n_tests for _ in codes])
        limit = float(timeout if timeout is not None else item.get("test_time_limit") or sandbox.DEFAULT_TIMEOUT_S)
        for r, code in enumerate(codes):
            if not isinstance(code, str) or code == NO_CODE or not code.strip():
                continue
            if kind == "function":
                jobs.append(sandbox.FunctionJob(code, payload[0], setup=payload[1], timeout=limit, memory_mb=memory_mb))
            else:
                jobs.append(sandbox.StdioJob(code, payload[0], payload[1], timeout=limit, memory_mb=memory_mb))
            where.append((i, r))
    for (i, r), passed in zip(where, sandbox.run_many(jobs, workers=workers)):
        results[i][r] = passed
    return results


def grade_items(items, data_type, *, timeout=None, memory_mb=sandbox.DEFAULT_MEMORY_MB, workers=None):
    """Per item, per response: correct? (list[list[bool]]).

    math / option: `extracted_output` (or extraction from `full_output`) against `ground_truth_answer`.
    code: the response passes every test of the item in the sandbox (see `run_code_items`).
    Raises a one-line DataError for an unknown data_type or an item without gold answer / tests / outputs,
    before anything is graded or executed.
    """
    if data_type not in DATA_TYPES:
        raise DataError(f"unknown data_type '{data_type}': expected one of {', '.join(DATA_TYPES)}")
    predictions = [_predictions(item, i, data_type) for i, item in enumerate(items)]
    if data_type == "code":
        per_test = run_code_items(items, predictions, timeout=timeout, memory_mb=memory_mb, workers=workers)
        return [[bool(tests) and all(tests) for tests in item_results] for item_results in per_test]
    golds = [_gold_of(item, i, data_type) for i, item in enumerate(items)]
    grade = grade_math if data_type == "math" else grade_option
    return [[grade(pred, gold) for pred in preds] for preds, gold in zip(predictions, golds)]

"""Graders: boxed/code extraction, math equivalence truth table, options, pass@k, item grading."""
import math

import numpy as np
import pytest

from t3d.eval.grading import grade_items, grade_math, grade_option, pass_at_k, run_code_items
from t3d.tasks.answers import NO_ANSWER, NO_CODE, extract_answer, last_boxed, last_code_block
from t3d.common.io import DataError


# ------------------------------------------------------------------------------------------------ extraction
@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"first \boxed{1} then \boxed{\sqrt{2}} last", r"\sqrt{2}"),
        (r"\boxed{\left\{1, \{2\}\right\}}", r"\left\{1, \{2\}\right\}"),
        (r"$\boxed 5$.", "5"),
        (r"\fbox{B}", "B"),
        (r"\boxed{}", ""),
        (r"\boxed{3} and then \boxed{4", None),  # truncated last answer: no answer, not an older one
        ("no box here", None),
        ("", None),
        (None, None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_extract_answer_math_and_option_use_last_box_or_sentinel():
    assert extract_answer(r"x = \boxed{7}", {}, "math") == "7"
    assert extract_answer("seven", {}, "math") == NO_ANSWER
    assert extract_answer(r"\boxed{\text{C}}", {}, "option") == r"\text{C}"
    with pytest.raises(DataError, match="unknown data_type 'poetry'"):
        extract_answer("x", {}, "poetry")


def test_extract_code_function_style_prepends_prefix_and_stdio_does_not():
    item = {"test_method": "function", "prefix": "```python\ndef f(x):\n"}
    assert extract_answer("    return x + 1\n```\nDone.", item, "code") == "def f(x):\n    return x + 1"
    stdio = {"test_method": "stdio", "prefix": "```python\n"}
    assert extract_answer("print(1)\n```", stdio, "code") == NO_CODE
    two = "```python\nprint(1)\n```\ntext\n```python\n  print(2)\n```\n```\nplain\n```"
    assert extract_answer(two, stdio, "code") == "print(2)"  # last python-tagged block, dedented
    assert last_code_block("```\nx = 1\n```") == "x = 1"
    assert last_code_block("```python\nunterminated") is None


# ------------------------------------------------------------------------------------------------------ math
EQUIVALENT = [
    ("0.5", r"\frac{1}{2}"),
    (r"\dfrac12", r"\frac{1}{2}"),
    (r"\tfrac{1}{2}", "0.5"),
    ("1/2", r"\frac12"),
    (r"\frac{3}{4}", ".75"),
    ("1,234", "1234"),
    ("1234", "1,234"),
    ("1,234,567", "1234567"),
    (r"1\,000", "1000"),
    (r"1{,}000", "1000"),
    ("72.0", "72"),
    ("72", r"\boxed{72}"),
    ("72", "Natalia sold 48/2 = 24 clips in May.\n#### 72"),
    (r"\$18", "18"),
    (r"10\%", "10"),
    (r"12 \text{ cm}", "12"),
    (r"2\sqrt{3}", r"\sqrt{12}"),
    (r"\sqrt{2}/2", r"\frac{\sqrt2}{2}"),
    ("x^2+2x+1", "(x+1)^2"),
    ("x = 5", "5"),
    (r"\{1,2\}", r"\{2,1\}"),
    ("[1,2)", "[1,2)"),
    (r"2\pi", r"2\pi"),
    (r"\infty", r"\infty"),
    ("-3", "-3.0"),
]

NOT_EQUIVALENT = [
    ("3", "4"),
    ("-3", "3"),
    ("3.0001", "3"),
    ("6.28", r"2\pi"),
    ("(1,23)", "(12,3)"),  # the reference's comma stripping conflated these
    ("0.333", r"\frac13"),
    ("", "3"),
    ("   ", "3"),
    (None, "3"),
    ("3", None),
    ("3", ""),
    (NO_ANSWER, "3"),
    (r"\frac{1}{2", "0.5"),  # unbalanced braces
    ("}{", "1"),
    ("hello world", "7"),
    ("x" * 5000, "7"),
]


@pytest.mark.parametrize("pred, gold", EQUIVALENT)
def test_equivalent_answers_are_correct(pred, gold):
    assert grade_math(pred, gold) is True


@pytest.mark.parametrize("pred, gold", NOT_EQUIVALENT)
def test_wrong_empty_and_malformed_answers_are_wrong(pred, gold):
    assert grade_math(pred, gold) is False


def test_pathological_input_is_bounded_by_the_time_limit():
    import time

    start = time.monotonic()
    assert grade_math(r"(10^{100})!", "3") is False
    assert time.monotonic() - start < 8  # math_verify's per-step alarms (2 s each), not a hang


def test_grade_math_works_outside_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(grade_math, ["0.25", "0.3"], [r"\frac14", r"\frac14"])) == [True, False]


# ---------------------------------------------------------------------------------------------------- option
@pytest.mark.parametrize("pred", ["B", "(B)", "B.", "B:", r"\text{B}", r"\textbf{(B)}", "b", " ( B ) "])
def test_option_letter_forms_match(pred):
    assert grade_option(pred, "B") is True


@pytest.mark.parametrize("pred", ["C", "E", "AB", "B is right", "", None, NO_ANSWER, r"\text{}"])
def test_option_mismatches(pred):
    assert grade_option(pred, "B") is False


def test_option_gold_may_be_boxed_or_decorated():
    assert grade_option("D", r"\boxed{D}") and grade_option("(a)", "A.")


# ---------------------------------------------------------------------------------------------------- pass@k
def test_pass_at_k_matches_the_binomial_formula():
    def exact(n, c, k):
        return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)

    n = np.array([5, 5, 5, 10, 10, 1])
    c = np.array([0, 1, 5, 3, 8, 1])
    for k in (1, 2, 4):
        mask = n >= k
        got = pass_at_k(n[mask], c[mask], k)
        want = [exact(a, b, k) for a, b in zip(n[mask], c[mask])]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)
    assert pass_at_k(3, 0, 3) == 0.0 and pass_at_k(3, 1, 3) == 1.0
    assert isinstance(pass_at_k(4, 1, 1), float)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(2, 1, 3)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(2, 3, 1)


# ----------------------------------------------------------------------------------------------------- items
def test_grade_items_math_uses_extracted_output_or_extracts():
    items = [
        {"ground_truth_answer": r"\frac{1}{2}", "extracted_output": ["0.5", NO_ANSWER, "1/3"]},
        {"ground_truth_answer": "18", "full_output": [r"The total is \boxed{\$18}.", "no box 18"]},
    ]
    assert grade_items(items, "math") == [[True, False, False], [True, False]]


def test_grade_items_option():
    items = [{"ground_truth_answer": "C", "full_output": [r"\boxed{C}", r"\boxed{(A)}", "C"]}]
    assert grade_items(items, "option") == [[True, False, False]]


def test_grade_items_errors_are_one_line_and_name_the_item():
    ok = {"ground_truth_answer": "1", "extracted_output": ["1"]}
    with pytest.raises(DataError, match=r"^item 1: no 'ground_truth_answer' to grade against \(data_type=math\)$"):
        grade_items([ok, {"extracted_output": ["1"]}], "math")
    with pytest.raises(DataError, match=r"^item 0: needs 'full_output'"):
        grade_items([{"ground_truth_answer": "1"}], "math")
    with pytest.raises(DataError, match=r"^unknown data_type 'essay'"):
        grade_items([ok], "essay")
    with pytest.raises(DataError, match=r"^item 0: function code item needs a non-empty 'test_list'"):
        grade_items([{"test_method": "function", "extracted_output": ["pass"]}], "code")
    with pytest.raises(DataError, match=r"^item 0: 'test_input' has 2 cases but 'test_output' has 1$"):
        grade_items([{"test_method": "stdio", "test_input": ["1", "2"], "test_output": ["1"],
                      "extracted_output": ["pass"]}], "code")
    with pytest.raises(DataError, match=r"^item 0: unknown test_method 'unit'"):
        grade_items([{"test_method": "unit", "extracted_output": ["pass"]}], "code")


def test_grade_items_code_mbpp_humaneval_and_stdio():
    mbpp = {
        "test_method": "function",
        "prefix": "```python\n",
        "test_list": ["assert square(3) == 9", "assert square(-2) == 4"],
        "full_output": [
            "def square(x):\n    return x * x\n```",
            "def square(x):\n    return 9\n```",
            "import sys\nsys.exit(0)\n```",
            "I cannot write code.",
        ],
    }
    humaneval = {
        "test_method": "function",
        "test": "def check(candidate):\n    assert candidate('ab') == 'ba'\n",
        "entry_point": "rev",
        "extracted_output": ["def rev(s):\n    return s[::-1]", "def rev(s):\n    return s"],
    }
    stdio = {
        "test_method": "stdio",
        "test_input": ["2 3\n", "10 -4\n"],
        "test_output": ["5", "6"],
        "full_output": ["```python\na, b = map(int, input().split())\nprint(a + b)\n```", "```python\nprint(5)\n```"],
    }
    items = [mbpp, humaneval, stdio]
    assert grade_items(items, "code", workers=2) == [[True, False, False, False], [True, False], [True, False]]
    assert run_code_items([stdio], workers=2) == [[[True, True], [True, False]]]

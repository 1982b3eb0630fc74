"""Seeded synthetic math task (MATH_train/MATH500 JSON format) with a built-in few-step gap.

Each problem adds three 2-digit numbers. Its solution is a two-step chain written in one of four
phrasings that already differ at the first response token and pass through *different* intermediate
sums (a+b, b+c, a+c, c+b). Decoding a block in one step samples every position from its own marginal,
so phrasings (and their intermediate digits) mix inside a block and the chain breaks; decoding one
token per step stays on one phrasing. A task with one valid output shows no gap at all
(shared/docs/toy-notes.md), which is why the multiplicity is the point of the design.

    python synthetic_math.py --seed 0 --train 20000 --test 500 --out_dir .

Train and test never share a problem: a problem's key is its sorted operand triple, and a fixed hash of
that key (independent of the seed) puts it in the test pool (10%) or the train pool, so any seed's
train split is disjoint from any seed's test split, also up to operand order. Items are drawn from a
seeded shuffle of the pool, so `make_items(k, s, split)` is a prefix of `make_items(n, s, split)`.
"""
import argparse
import functools
import hashlib
import itertools
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.io import atomic_write_text  # noqa: E402

LOW, HIGH = 10, 99  # operand range (inclusive)
TEST_PERMILLE = 100  # share of problem keys reserved for the test split
SPLITS = ("train", "test")

QUESTION_STYLES = (
    "Compute {a}+{b}+{c}.",
    "What is the sum of {a}, {b} and {c}?",
    "Add {a}, {b} and {c}.",
    "Find {a}+{b}+{c}.",
)
# Each phrasing starts with its own word and adds the operands in its own order, so the intermediate
# value differs between phrasings (x = first pair's sum).
SOLUTION_STYLES = (
    ("First {a}+{b}={x}, then {x}+{c}={n}. \\boxed{{{n}}}", ("a", "b", "c")),
    ("We have {b}+{c}={x} and {a}+{x}={n}. \\boxed{{{n}}}", ("b", "c", "a")),
    ("Step 1: {a}+{c}={x}. Step 2: {x}+{b}={n}. \\boxed{{{n}}}", ("a", "c", "b")),
    ("Add {c}+{b}={x}, then {x}+{a}={n}. \\boxed{{{n}}}", ("c", "b", "a")),
)


def _in_test_pool(key):
    digest = hashlib.sha256(",".join(map(str, key)).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 1000 < TEST_PERMILLE


@functools.lru_cache(maxsize=None)
def problem_pool(split, low=LOW, high=HIGH):
    """Sorted operand triples (multisets) belonging to `split`, in a fixed order (a tuple: cached)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    want_test = split == "test"
    return tuple(k for k in itertools.combinations_with_replacement(range(low, high + 1), 3)
                 if _in_test_pool(k) == want_test)


def solutions(a, b, c):
    """All valid solution texts for a+b+c, in SOLUTION_STYLES order."""
    vals = {"a": a, "b": b, "c": c}
    out = []
    for template, order in SOLUTION_STYLES:
        x = vals[order[0]] + vals[order[1]]
        out.append(template.format(a=a, b=b, c=c, x=x, n=a + b + c))
    return out


def make_items(n, seed, split):
    """`n` distinct problems of `split` ('train' or 'test'), deterministic for `seed`.

    Item keys: id, question, ground_truth_answer (str), solution (SFT target, one phrasing drawn per
    item), operands, question_style, solution_style; test items also carry `solutions` (every valid
    phrasing, to measure how often a decoder's output is exactly one of them).
    """
    pool = list(problem_pool(split))
    if not 0 <= n <= len(pool):
        raise ValueError(f"{split}: asked for {n} problems, the {split} pool holds {len(pool)}")
    rng = random.Random(f"synthetic_math/{split}/{seed}")
    rng.shuffle(pool)
    items = []
    for i, key in enumerate(pool[:n]):
        a, b, c = rng.sample(key, 3)  # random operand order
        q_style = rng.randrange(len(QUESTION_STYLES))
        s_style = rng.randrange(len(SOLUTION_STYLES))
        sols = solutions(a, b, c)
        item = {
            "id": f"synthetic_math-{split}-{i}",
            "question": QUESTION_STYLES[q_style].format(a=a, b=b, c=c),
            "ground_truth_answer": str(a + b + c),
            "solution": sols[s_style],
            "operands": [a, b, c],
            "question_style": q_style,
            "solution_style": s_style,
        }
        if split == "test":
            item["solutions"] = sols
        items.append(item)
    return items


def dumps_items(items):
    """A JSON list with one item per line: compact, yet diffable and greppable."""
    return "[\n" + ",\n".join(json.dumps(it, ensure_ascii=False) for it in items) + "\n]\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=20000, help="number of train problems")
    parser.add_argument("--test", type=int, default=500, help="number of test problems")
    parser.add_argument("--smoke", type=int, default=16, help="size of synthetic_math_smoke.json (test prefix); 0 = skip")
    parser.add_argument("--out_dir", default=str(Path(__file__).resolve().parent))
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    try:
        train, test = make_items(args.train, args.seed, "train"), make_items(args.test, args.seed, "test")
    except ValueError as err:
        parser.exit(2, f"synthetic_math.py: error: {err}\n")
    files = [(out / "synthetic_math_train.json", train), (out / "synthetic_math_test.json", test)]
    if args.smoke:
        files.append((out / "synthetic_math_smoke.json", make_items(min(args.smoke, args.test or args.smoke),
                                                                    args.seed, "test")))
    for path, items in files:
        atomic_write_text(path, dumps_items(items))
        print(f"wrote {path} ({len(items)} items)")


if __name__ == "__main__":
    main()

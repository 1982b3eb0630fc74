"""Seeded synthetic math task (MATH_train/MATH500 JSON format) with a built-in few-step gap.

Each problem adds two 2-digit numbers. Its solution is written in one of four phrasings that already
differ at the first response token and put the operands and the sum at different offsets. Decoding a
block in one step samples every position from its own marginal, so phrasings mix inside a block ("The+47
is") and the sum is then computed from a broken context; decoding one token per step stays on one
phrasing. A task with one valid output shows no gap at all (shared/docs/toy-notes.md), which is why the
multiplicity is the point of the design.

    python synthetic_math.py --seed 0 --train 20000 --val 400 --test 500 --out_dir .

Splits never share a problem: a problem's key is its sorted operand pair, and a fixed hash of that key
(independent of the seed) puts it in the test pool (15%), the validation pool (11%) or the train pool, so
any seed's splits are disjoint, also up to operand order. Items are drawn from seeded shuffles of the
pool, so `make_items(k, s, split)` is a prefix of `make_items(n, s, split)`. Validation and test items are
distinct problems; train items cycle through the train pool (a fresh shuffle, operand order, question
and phrasing per pass), since 20,000 samples exceed its ~3,070 problems.
"""
import argparse
import functools
import hashlib
import itertools
import json
import random
from pathlib import Path

from t3d.common.paths import DATA
from t3d.common.io import atomic_write_text

LOW, HIGH = 10, 99  # operand range (inclusive)
# share of the 4,095 problem keys (per mille of a fixed hash) in each held-out split; the rest is train
HELD_OUT_PERMILLE = {"test": (0, 150), "val": (150, 260)}
SPLITS = ("train", "val", "test")

QUESTION_STYLES = (
    "Compute {a}+{b}.",
    "What is the sum of {a} and {b}?",
    "Add {a} and {b}.",
    "Find {a}+{b}.",
)
# Each phrasing starts differently and puts the sum at a different offset, so a block decoded in one
# step mixes positions of different phrasings (operand digits, then the sum's digits).
SOLUTION_STYLES = (
    "{a}+{b}={n}. \\boxed{{{n}}}",
    "{b}+{a}={n}. \\boxed{{{n}}}",
    "The sum is {n}. \\boxed{{{n}}}",
    "Adding {a} and {b} gives {n}. \\boxed{{{n}}}",
)


def split_of(key):
    """The split a problem key (sorted operands) belongs to: a fixed hash, the same for every seed."""
    bucket = int.from_bytes(hashlib.sha256(",".join(map(str, key)).encode()).digest()[:4], "big") % 1000
    return next((name for name, (lo, hi) in HELD_OUT_PERMILLE.items() if lo <= bucket < hi), "train")


@functools.lru_cache(maxsize=None)
def problem_pool(split, low=LOW, high=HIGH):
    """Sorted operand pairs (multisets) belonging to `split`, in a fixed order (a tuple: cached)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    return tuple(k for k in itertools.combinations_with_replacement(range(low, high + 1), 2) if split_of(k) == split)


def solutions(a, b):
    """All valid solution texts for a+b, in SOLUTION_STYLES order."""
    return [template.format(a=a, b=b, n=a + b) for template in SOLUTION_STYLES]


def make_items(n, seed, split):
    """`n` problems of `split` ('train', 'val' or 'test'), deterministic for `seed`.

    Item keys: id, question, ground_truth_answer (str), solution (SFT target, one phrasing drawn per
    item), operands, question_style, solution_style; val and test items also carry `solutions` (every
    valid phrasing, to measure how often a decoder's output is exactly one of them).
    """
    pool = problem_pool(split)
    held_out = split != "train"
    if n < 0 or (held_out and n > len(pool)):
        raise ValueError(f"{split}: asked for {n} problems, the {split} pool holds {len(pool)} distinct ones")
    rng = random.Random(f"synthetic_math/{split}/{seed}")
    keys = []
    while len(keys) < n:  # one seeded shuffle per pass over the pool (a single pass for val/test)
        keys += rng.sample(pool, len(pool))
    items = []
    for i, key in enumerate(keys[:n]):
        a, b = rng.sample(key, 2)  # random operand order
        q_style = rng.randrange(len(QUESTION_STYLES))
        s_style = rng.randrange(len(SOLUTION_STYLES))
        sols = solutions(a, b)
        item = {
            "id": f"synthetic_math-{split}-{i}",
            "question": QUESTION_STYLES[q_style].format(a=a, b=b),
            "ground_truth_answer": str(a + b),
            "solution": sols[s_style],
            "operands": [a, b],
            "question_style": q_style,
            "solution_style": s_style,
        }
        if held_out:
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
    parser.add_argument("--val", type=int, default=400, help="number of validation problems (for tuning)")
    parser.add_argument("--test", type=int, default=500, help="number of test problems")
    parser.add_argument("--smoke", type=int, default=16, help="size of synthetic_math_smoke.json (test prefix); 0 = skip")
    parser.add_argument("--out_dir", default=str(DATA))
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    try:
        files = [(out / f"synthetic_math_{split}.json", make_items(n, args.seed, split))
                 for split, n in (("train", args.train), ("val", args.val), ("test", args.test))]
    except ValueError as err:
        parser.exit(2, f"synthetic_math.py: error: {err}\n")
    if args.smoke:
        files.append((out / "synthetic_math_smoke.json", make_items(min(args.smoke, args.test or args.smoke),
                                                                    args.seed, "test")))
    for path, items in files:
        atomic_write_text(path, dumps_items(items))
        print(f"wrote {path} ({len(items)} items)")


if __name__ == "__main__":
    main()

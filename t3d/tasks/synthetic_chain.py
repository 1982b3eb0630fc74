"""Seeded multi-step arithmetic task with parallel headroom (block size 8; usable at 4 and 16).

A problem sums four 2-digit numbers. Its solution writes three partial sums in one of four ORDERS
(left chain, right chain, adjacent pairs, outer pairs) and one of three PHRASINGS: twelve valid texts of
~50-65 tokens with the tiny tokenizer, e.g.

    First, 47+38=85. Then, 85+25=110. Finally, 110+16=126. The answer is \\boxed{126}.

Why it has headroom for few-step decoding: inside a block the tokens depend on each other (which operands
a step adds fixes the digits of its sum, and a later step reuses that sum), and the orders and phrasings
diverge early, so a block decoded in one step mixes solutions; while a long answer lets S=1 at B=8 reach
~7 tokens per forward. The last synthetic_math task tops out near 2.9 tokens per forward at B=4.

    python synthetic_chain.py --seed 0 --train 20000 --val 400 --test 500 --ood 400 --out_dir .

Splits: a problem's key is its sorted operand 4-tuple; the fixed hash of `synthetic_math.split_of` puts it
in the test (15%), validation (11%) or train pool, for every seed. Problems are drawn by seeded rejection
sampling of each pool (C(93, 4) ~ 3M keys: nothing is enumerated). `ood` holds test-pool problems asked
with question templates that no other split uses, to measure what a method gives up under a shift in
wording (its own seeded stream, so it is not a copy of test).
"""
import argparse
import random
from pathlib import Path

from t3d.tasks.synthetic_math import dumps_items, split_of
from t3d.common.paths import DATA
from t3d.common.io import atomic_write_text

LOW, HIGH = 10, 99  # operand range (inclusive)
SPLITS = ("train", "val", "test", "ood")

QUESTION_STYLES = (
    "Compute {a}+{b}+{c}+{d}.",
    "What is the sum of {a}, {b}, {c} and {d}?",
    "Add {a}, {b}, {c} and {d}.",
    "Find {a}+{b}+{c}+{d}.",
)
OOD_QUESTION_STYLES = (  # never used by train, val or test
    "Calculate the total of {a}, {b}, {c} and {d}.",
    "How much is {a} plus {b} plus {c} plus {d}?",
    "Sum up {a}, {b}, {c}, {d}.",
)


def _orders(a, b, c, d):
    """The four accumulation orders: each a list of three (x, y) additions, later ones using earlier sums."""
    return (
        [(a, b), (a + b, c), (a + b + c, d)],  # left chain
        [(d, c), (d + c, b), (d + c + b, a)],  # right chain
        [(a, b), (c, d), (a + b, c + d)],  # adjacent pairs
        [(a, d), (b, c), (a + d, b + c)],  # outer pairs
    )


PHRASINGS = (
    "First, {0}. Then, {1}. Finally, {2}. The answer is \\boxed{{{n}}}.",
    "Step 1: {0}. Step 2: {1}. Step 3: {2}. So the total is \\boxed{{{n}}}.",
    "We add {0}, then {1}, and then {2}. Hence the sum is \\boxed{{{n}}}.",
)


def solutions(a, b, c, d):
    """All valid solution texts, order-major: index = order * len(PHRASINGS) + phrasing."""
    n = a + b + c + d
    texts = []
    for steps in _orders(a, b, c, d):
        written = [f"{x}+{y}={x + y}" for x, y in steps]
        texts += [template.format(*written, n=n) for template in PHRASINGS]
    return texts


def _draw_key(rng, split):
    """A sorted operand 4-tuple of `split`'s pool (rejection sampling: ~74% / 15% / 11% acceptance)."""
    pool = "test" if split == "ood" else split
    while True:
        key = tuple(sorted(rng.randint(LOW, HIGH) for _ in range(4)))
        if split_of(key) == pool:
            return key


def make_items(n, seed, split):
    """`n` problems of `split` ('train', 'val', 'test' or 'ood'), deterministic for `seed`; a prefix of
    any larger request. Held-out splits (val, test, ood) hold distinct problems and list every valid
    phrasing in `solutions`. Keys: id, question, ground_truth_answer (str), solution (the SFT target),
    operands, question_style, solution_style (order * 3 + phrasing)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    if n < 0:
        raise ValueError(f"{split}: asked for {n} problems")
    rng = random.Random(f"synthetic_chain/{split}/{seed}")
    held_out = split != "train"
    questions = OOD_QUESTION_STYLES if split == "ood" else QUESTION_STYLES
    seen, items = set(), []
    while len(items) < n:
        key = _draw_key(rng, split)
        if held_out and key in seen:
            continue
        seen.add(key)
        a, b, c, d = rng.sample(key, 4)  # random operand order
        q_style = rng.randrange(len(questions))
        sols = solutions(a, b, c, d)
        s_style = rng.randrange(len(sols))
        item = {
            "id": f"synthetic_chain-{split}-{len(items)}",
            "question": questions[q_style].format(a=a, b=b, c=c, d=d),
            "ground_truth_answer": str(a + b + c + d),
            "solution": sols[s_style],
            "operands": [a, b, c, d],
            "question_style": q_style,
            "solution_style": s_style,
        }
        if held_out:
            item["solutions"] = sols
        items.append(item)
    return items


def make_fresh(n, seed, exclude):
    """`n` test-pool problems drawn independently of the test split (the stream of seed + 1) that share no
    operand set with `exclude` (the test and ood items of `seed`): a second test set of the same task family, to
    check that a conclusion drawn on test is not a property of its particular problems."""
    taken = {tuple(sorted(item["operands"])) for item in exclude}
    items, drawn = [], n
    while len(items) < n:
        items = [it for it in make_items(drawn, seed + 1, "test") if tuple(sorted(it["operands"])) not in taken][:n]
        drawn += n - len(items)
    return [dict(it, id=f"synthetic_chain-fresh-{i}") for i, it in enumerate(items)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=20000, help="number of train problems")
    parser.add_argument("--val", type=int, default=400, help="number of validation problems (for tuning)")
    parser.add_argument("--test", type=int, default=500, help="number of test problems")
    parser.add_argument("--ood", type=int, default=400, help="test-pool problems asked with unseen question templates")
    parser.add_argument("--smoke", type=int, default=16, help="size of synthetic_chain_smoke.json (test prefix); 0 = skip")
    parser.add_argument("--fresh", type=int, default=0,
                        help="size of synthetic_chain_fresh.json: test-pool problems of another stream, none of them "
                             "in test or ood (0 = skip)")
    parser.add_argument("--out_dir", default=str(DATA))
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    sizes = {"train": args.train, "val": args.val, "test": args.test, "ood": args.ood}
    try:
        files = [(out / f"synthetic_chain_{split}.json", make_items(n, args.seed, split)) for split, n in sizes.items()]
    except ValueError as err:
        parser.exit(2, f"synthetic_chain.py: error: {err}\n")
    if args.smoke:
        files.append((out / "synthetic_chain_smoke.json", make_items(args.smoke, args.seed, "test")))
    if args.fresh:
        held = [item for path, items in files if path.stem.endswith(("_test", "_ood")) for item in items]
        files.append((out / "synthetic_chain_fresh.json", make_fresh(args.fresh, args.seed, held)))
    for path, items in files:
        atomic_write_text(path, dumps_items(items))
        print(f"wrote {path} ({len(items)} items)")


if __name__ == "__main__":
    main()

"""Item-level uncertainty for the experiment reports: paired bootstrap intervals over evaluation items.

Seeds give the spread of a method across training runs; the items give the sampling error of each accuracy.
A difference between two methods is measured on the SAME items, so it is bootstrapped paired: each resample
draws item indices with replacement once and scores both methods on them. A method's per-item score is its
correctness averaged over its seeds (and replicas), so the resampled mean is the seed-mean accuracy; AUP is
recomputed per seed from the resampled accuracies and averaged over seeds, as the point estimate is.
Tokens per forward and AUP's y_max are held at their observed values (only correctness is resampled).
"""
import json
from pathlib import Path

import numpy as np

SEED = 0
RESAMPLES = 2000


def item_correctness(run_dir):
    """{item index: share of its replicas graded correct} from an eval result's items.jsonl."""
    per = {}
    for line in (Path(run_dir) / "items.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            per.setdefault(int(rec["index"]), []).append(1.0 if rec.get("correct") else 0.0)
    return {i: sum(v) / len(v) for i, v in per.items()}


def correctness_matrix(rows, items=None):
    """rows of one method and setting (one per seed) -> [seeds, items] array, items in index order.

    Every row must cover the same items (`items`: the index list to use; default the first row's)."""
    per_row = [item_correctness(r["run_dir"]) for r in rows]
    items = sorted(per_row[0]) if items is None else list(items)
    for r, got in zip(rows, per_row):
        if set(got) != set(items):
            raise ValueError(f"{r['run_dir']}: its items differ from the other results of the comparison")
    return np.array([[got[i] for i in items] for got in per_row], dtype=np.float64)


def resample_indices(n_items, resamples=RESAMPLES, seed=SEED):
    """[resamples, n_items] item indices drawn with replacement (a fixed seed: reports are reproducible)."""
    return np.random.default_rng(seed).integers(0, n_items, size=(resamples, n_items))


def interval(samples, level=0.95):
    lo, hi = np.quantile(np.asarray(samples, dtype=np.float64), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_difference(a, b, idx=None, level=0.95):
    """Accuracy of A minus B with a paired bootstrap interval.

    a, b: [seeds, items] correctness (seed counts may differ); idx: resample_indices(items).
    -> {"diff", "low", "high"}: the observed seed-mean difference and the percentile interval."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired comparison needs the same items, got {a.shape[1]} and {b.shape[1]}")
    idx = resample_indices(a.shape[1]) if idx is None else idx
    per_item = a.mean(0) - b.mean(0)  # the difference is linear: resample its per-item values
    lo, hi = interval(per_item[idx].mean(1), level)
    return {"diff": float(per_item.mean()), "low": lo, "high": hi}


def resampled_aup(points, idx, y_max):
    """points: [(tokens per forward, [seeds, items] correctness), ...] of one method's settings ->
    (observed seed-mean AUP, [resamples] seed-mean AUP). Accuracies in percent, as AUP takes them."""
    from t3d.eval.aup import aup

    seeds = points[0][1].shape[0]
    observed = np.mean([aup([(x, 100 * c[s].mean()) for x, c in points], y_max)[0] for s in range(seeds)])
    acc = [(x, 100 * c[:, idx].mean(-1)) for x, c in points]  # [seeds, resamples] per setting
    out = np.empty(idx.shape[0])
    for k in range(idx.shape[0]):
        out[k] = np.mean([aup([(x, a[s, k]) for x, a in acc], y_max)[0] for s in range(seeds)])
    return float(observed), out


def paired_aup_difference(points_a, points_b, y_max, idx, level=0.95):
    """AUP of A minus B (each the seed mean) with a paired bootstrap interval over the items."""
    obs_a, res_a = resampled_aup(points_a, idx, y_max)
    obs_b, res_b = resampled_aup(points_b, idx, y_max)
    lo, hi = interval(res_a - res_b, level)
    return {"diff": obs_a - obs_b, "low": lo, "high": hi}

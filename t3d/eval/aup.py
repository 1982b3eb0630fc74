"""AUP (Accuracy Under Parallelism), the d3LLM leaderboard's score for a decoder's speed/quality frontier.

Definition (d3LLM, `AUP_leaderboard/aup_utils.py`), over one method's (rho_i, y_i) points, with rho =
tokens per forward and y = accuracy in percent, sorted by rho:

    keep only points with y_i >= y_1 - 5        (y_1: accuracy at the lowest parallelism)
    AUP = rho_1 * y_1 + sum_{i>=2} 1/2 (rho_i - rho_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1}))
    W(y) = min(exp(-alpha (1 - y / y_max)), 1),  alpha = 3

y_max is the best accuracy of ALL methods being compared (so AUPs are comparable only within one
comparison). The leaderboard script asserts instead of filtering when the last point falls more than 5
points below y_1; here such points are dropped as the definition says and their number is reported.
"""
import math


def quality_weight(y, y_max, alpha=3.0):
    """W(y): 1 at or above y_max, decaying exponentially with the relative accuracy drop."""
    return min(math.exp(-alpha * (1.0 - y / y_max)), 1.0)


def aup(points, y_max, alpha=3.0, y_min_offset=5.0):
    """points: [(tokens_per_forward, accuracy_percent), ...] of one method -> (AUP, points used)."""
    if not points:
        raise ValueError("AUP needs at least one (tokens per forward, accuracy) point")
    if any(rho <= 0 for rho, _ in points):
        raise ValueError(f"AUP needs positive tokens per forward, got {[rho for rho, _ in points]}")
    if y_max <= 0:
        raise ValueError(f"AUP needs a positive best accuracy y_max, got {y_max}")
    ordered = sorted(points, key=lambda p: p[0])
    y_floor = ordered[0][1] - y_min_offset
    kept = [(rho, y) for rho, y in ordered if y >= y_floor]
    score = kept[0][0] * kept[0][1]
    for (rho0, y0), (rho1, y1) in zip(kept, kept[1:]):
        score += 0.5 * (rho1 - rho0) * (y1 * quality_weight(y1, y_max, alpha) + y0 * quality_weight(y0, y_max, alpha))
    return score, len(kept)

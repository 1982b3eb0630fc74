import math

import pytest

from t3d.eval.aup import aup, quality_weight


def test_weight_is_one_at_best_and_decays_exponentially():
    assert quality_weight(80.0, 80.0) == 1.0
    assert quality_weight(90.0, 80.0) == 1.0  # capped at 1 above y_max
    assert quality_weight(78.0, 80.0) == pytest.approx(math.exp(-0.075), abs=1e-15)


def test_hand_computed_example_drops_points_below_floor():
    # sorted by rho: (1, 80), (2, 78), (4, 70); floor = 80 - 5 = 75 drops (4, 70).
    # AUP = 1*80 + 0.5*(2-1)*(78*exp(-3*(1-78/80)) + 80*1) = 80 + 0.5*(72.36399193 + 80) = 156.18199596
    score, used = aup([(4.0, 70.0), (1.0, 80.0), (2.0, 78.0)], y_max=80.0)
    assert used == 2
    assert score == pytest.approx(156.18199596, abs=1e-7)


def test_single_point_is_rectangle_and_y_max_from_other_method_penalises():
    assert aup([(2.5, 60.0)], y_max=99.0) == (150.0, 1)  # first term is unweighted
    # two points at 60%: the trapezoid is weighted by W(60) against a better method's 90%
    score, _ = aup([(1.0, 60.0), (3.0, 60.0)], y_max=90.0)
    assert score == pytest.approx(60.0 + 2.0 * 60.0 * math.exp(-1.0), abs=1e-12)


@pytest.mark.parametrize("points,y_max", [([], 1.0), ([(0.0, 50.0)], 50.0), ([(1.0, 50.0)], 0.0)])
def test_bad_input_is_refused(points, y_max):
    with pytest.raises(ValueError):
        aup(points, y_max)

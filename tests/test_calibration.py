"""Calibration: a temperature fitted on held-out predictions recovers the one that made them."""

import numpy as np
import pytest

from agf.models.calibration import calibrate, fit_temperature, reliability


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 3.0])
def test_the_fitted_temperature_recovers_an_overconfident_or_timid_model(true_temperature):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(20_000, 8))
    honest = calibrate(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), true_temperature)
    labels = np.array([rng.choice(8, p=p / p.sum()) for p in honest.astype(np.float64)])
    reported = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # what the model says: T = 1
    fitted = fit_temperature(reported, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.1)
    before, after = reliability(reported, labels)["ece"], reliability(calibrate(reported, fitted), labels)["ece"]
    assert after <= before + 0.005 and after < 0.02  # (an honest model, T = 1, has nothing to gain)


def test_calibration_keeps_each_rows_ranking_and_sums_to_one():
    p = np.random.default_rng(1).dirichlet(np.ones(5), size=50)
    for t in (0.3, 1.0, 4.0):
        q = calibrate(p, t)
        np.testing.assert_allclose(q.sum(axis=1), 1, rtol=1e-5)
        assert (np.argsort(q, axis=1)[:, -1] == np.argsort(p, axis=1)[:, -1]).all()

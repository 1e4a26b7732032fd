"""Calibrated probabilities: a temperature fitted on the validation split, and how to measure it.

A classifier's probabilities ``p`` are recalibrated as ``softmax(log(p) / T)``. For the transfer
MLP that is exactly temperature scaling of its logits; for the genre CNN, whose clip probability
is the mean of its patches' softmax, it is the same scaling applied to the clip's log
probabilities. ``T`` minimises the log loss on the validation split (Guo et al., 2017).
"""

import numpy as np
from scipy.optimize import minimize_scalar

#: The range searched for the temperature: sharper up to 20x, flatter up to 20x.
LOG_T_RANGE = (np.log(0.05), np.log(20.0))


def calibrate(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` row by row.

    Parameters
    ----------
    probabilities : np.ndarray, shape (n, n_classes)
        Each row sums to 1.
    temperature : float
        Above 1 flattens the rows (less confident), below 1 sharpens them.

    Returns
    -------
    np.ndarray, shape (n, n_classes), float32
    """
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(axis=1, keepdims=True)).astype(np.float32)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the mean log loss of ``calibrate(probabilities, T)``.

    Parameters
    ----------
    probabilities : np.ndarray, shape (n, n_classes)
        Validation probabilities.
    labels : np.ndarray, shape (n,), int
        The true class of each row.
    """
    rows = np.arange(len(labels))

    def loss(log_t: float) -> float:
        return float(-np.log(np.clip(calibrate(probabilities, np.exp(log_t))[rows, labels], 1e-12, 1)).mean())

    return float(np.exp(minimize_scalar(loss, bounds=LOG_T_RANGE, method="bounded").x))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    """Expected calibration error and the reliability curve over ``bins`` equal-width bins.

    Returns
    -------
    dict
        ``ece`` (the support-weighted mean gap between confidence and accuracy), and per bin
        ``confidence``, ``accuracy`` and ``count`` lists (``None`` for an empty bin).
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    curve = {"confidence": [], "accuracy": [], "count": []}
    ece = 0.0
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        curve["count"].append(n)
        curve["confidence"].append(round(float(confidence[mask].mean()), 4) if n else None)
        curve["accuracy"].append(round(float(correct[mask].mean()), 4) if n else None)
        if n:
            ece += n / len(labels) * abs(float(correct[mask].mean()) - float(confidence[mask].mean()))
    return {"ece": round(ece, 4), **curve}

"""Progress a person can follow: training moves within its first epoch and says each epoch's losses."""

import io

from rich.console import Console

from agf import progress
from agf.models.train import TrainParams, fit_cnn
from agf.store import Store


def test_training_progress_counts_batches_and_reports_each_epoch(trained, monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=screen, force_terminal=True, width=160))
    with Store.open(trained["store"]) as store:
        _, _, _, metrics = fit_cnn(store, "genre", TrainParams(epochs=2, crops_per_track=2, batch_size=8))
    batches = -(-metrics["train_tracks"] * 2 // 8)
    text = screen.getvalue()
    assert f"1/{2 * batches}" in text and f"{2 * batches}/{2 * batches}" in text  # steps inside the epochs
    assert "batches/s" in text and "epoch 1: loss" in text and "epoch 2: loss" in text

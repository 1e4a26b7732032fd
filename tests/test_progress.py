"""What a person reads: training progress within its first epoch, and confusion matrices with legible counts."""

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
    # counted in batches (the final frame; intermediate ones depend on the refresh timer), with each epoch's losses
    assert f"{2 * batches}/{2 * batches}" in text and "batches/s" in text and "epoch 2: loss" in text


def test_confusion_counts_are_white_on_dark_cells_and_black_on_light_ones():
    import matplotlib.colors
    import numpy as np

    from agf.app.evaluate import confusion_figure

    confusion = [[9, 1, 0], [2, 2, 0], [0, 5, 5]]  # a rare genre (row 2) shaded by its share, not its count
    report = {"classes": ["A", "B", "C"], "models": {"m": {"confusion": confusion, "accuracy": 0.6}}}
    ax = confusion_figure(report).axes[0]
    shading = ax.images[0].get_array()
    for text in ax.texts:
        j, i = (int(round(v)) for v in text.get_position())
        background = ax.images[0].cmap(shading[i, j])
        luminance = np.dot(matplotlib.colors.to_rgb(background), [0.2126, 0.7152, 0.0722])
        assert matplotlib.colors.to_hex(text.get_color()) == ("#ffffff" if luminance < 0.5 else "#000000"), text
    assert shading[1, 0] == shading[1, 1] == 0.5 and shading[0, 0] == 0.9

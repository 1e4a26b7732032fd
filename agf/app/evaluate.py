"""``agf evaluate``: every model that predicts genre, scored side by side as the challenge did.

Models: the genre-only CNN, the transfer MLP, and a baseline (logistic regression on the
``fma`` features, or on ``mfcc`` features when ``fma`` is not stored). Metrics on the test split:
accuracy, macro-F1, mean log loss over the genres, expected calibration error, per-genre
precision and recall, a confusion matrix and a reliability diagram. The split is drawn as
training drew it (the same method and seed); a model trained with another split or seed, which
may have learned some of the test tracks, is said so, and so is a test split too small or too
narrow to tell models apart: in the report's ``warnings``.
"""

import json
from pathlib import Path

import numpy as np

from agf.errors import AgfError
from agf.models.calibration import calibrate, reliability
from agf.models.data import assign_splits
from agf.models.train import all_tracks, genre_classes
from agf.models.serving import clip_outputs, load_cnn, pick_device, pick_precision
from agf.models.serving import load_transfer, transfer_probabilities
from agf.store import Store
from agf.store.registry import latest_model, model_row


def _baseline(store: Store, tracks: list[dict], splits: dict, classes: list[str], test: list[dict], seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feature = "fma" if store.count("features_fma") else "mfcc"
    ids, matrix = store.vectors(f"features_{feature}")
    row = {t: i for i, t in enumerate(ids.tolist())}
    train = [t for t in tracks if splits[t["track_id"]] == "training" and t["genre_top"] and t["track_id"] in row]
    if len({t["genre_top"] for t in train}) < 2:
        return None, feature
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, random_state=seed))
    clf.fit(matrix[[row[t["track_id"]] for t in train]], [t["genre_top"] for t in train])
    probabilities = np.zeros((len(test), len(classes)), np.float32)
    predicted = clf.predict_proba(matrix[[row[t["track_id"]] for t in test]])
    for j, c in enumerate(clf.classes_):
        probabilities[:, classes.index(c)] = predicted[:, j]
    return probabilities, feature


def scores(y_true: list[str], probabilities: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro-F1, mean log loss, per-genre precision/recall and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, precision_recall_fscore_support

    y_pred = [classes[i] for i in probabilities.argmax(axis=1)]
    present = sorted(set(y_true) | set(y_pred))
    precision, recall, _, support = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    clipped = np.clip(probabilities, 1e-7, 1)
    curve = reliability(probabilities, np.asarray([classes.index(y) for y in y_true]))
    return {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "macro_f1": round(float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)), 4),
        "log_loss": round(float(log_loss(y_true, clipped / clipped.sum(axis=1, keepdims=True), labels=classes)), 4),
        "ece": curve.pop("ece"),
        "reliability": curve,
        "per_genre": {c: {"precision": round(float(p), 3), "recall": round(float(r), 3), "support": int(s)}
                      for c, p, r, s in zip(classes, precision, recall, support)},
        "confusion": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }


def evaluate(store: Store, split: str = "auto", seed: int = 0, out_dir: Path | None = None,
             precision: str = "auto") -> dict:
    """Score every stored genre model on the test split; write report.json and confusion.png.

    ``precision`` is the genre CNN's arithmetic (:func:`pick_precision`); the transfer MLP reads
    the stored embeddings.
    """
    device = pick_device()
    precision = pick_precision(device, precision)
    tracks = all_tracks(store)
    splits = assign_splits(tracks, split, seed)
    classes = genre_classes(tracks)
    test = [t for t in tracks if splits[t["track_id"]] == "test" and t["genre_top"]]
    if not test:
        raise AgfError("no labelled tracks in the test split: nothing to evaluate")
    y_true = [t["genre_top"] for t in test]
    test_ids = [t["track_id"] for t in test]
    train_artists = {t["artist_id"] for t in tracks if splits[t["track_id"]] == "training"}
    models: dict[str, np.ndarray] = {}
    fitted: dict[str, list[str]] = {}  # each scored model's name -> the ids of every model fitted for it
    if (row := latest_model(store, "cnn", "genre")) is not None:
        model, spectra, config = load_cnn(store, row["model_id"])
        _, p = clip_outputs(model, spectra, test_ids, device, precision=precision)
        name = f"genre CNN ({row['model_id']})"
        models[name] = _align(calibrate(p, config.get("temperature", 1.0)), config["classes"], classes)
        fitted[name] = [row["model_id"]]
    if (row := latest_model(store, "transfer", "genre")) is not None:
        loaded = load_transfer(store, row["model_id"])
        model_classes, p = transfer_probabilities(store, row["model_id"], test_ids, loaded)
        name = f"transfer MLP ({row['model_id']})"
        models[name] = _align(p, model_classes, classes)
        fitted[name] = [row["model_id"], *loaded[1]["models"]]  # and the CNNs it reads
    trained = bool(models)
    leaks = [warning for name, ids in fitted.items() for warning in trained_on_test(store, name, ids, tracks, test_ids)]
    baseline, feature = _baseline(store, tracks, splits, classes, test, seed)
    if baseline is not None:
        models[f"baseline: logistic regression on {feature}"] = baseline
    report = {
        "split": split, "seed": seed, "precision": precision, "classes": classes, "test_tracks": len(test),
        "test_artists": len({t["artist_id"] for t in test}),
        "test_artists_also_in_training": len({t["artist_id"] for t in test} & train_artists),
        "support": {c: y_true.count(c) for c in classes},
        "warnings": inconclusive(y_true) + leaks + ([] if trained else [
            "no trained genre model yet, only the baseline is scored: run `agf train --target all`, `agf embed` and "
            "`agf train --target transfer`"]),
        "models": {name: scores(y_true, p, classes) for name, p in models.items()},
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").write_text(json.dumps(report, indent=2))
        _plot_confusion(report, out_dir / "confusion.png")
        _plot_reliability(report, out_dir / "reliability.png")
        report["files"] = [str(out_dir / name) for name in ("report.json", "confusion.png", "reliability.png")]
    return report


def trained_on_test(store: Store, name: str, model_ids: list[str], tracks: list[dict], test_ids: list[int]) -> list[str]:
    """Warnings for the models of ``model_ids`` (those behind the scored model ``name``) that were
    fitted or stopped early on any of ``test_ids``: their training and validation splits are
    drawn again from the ``split`` and ``seed`` each recorded. Empty when none was.

    A model trained with another ``--split`` or ``--seed`` than the evaluation's may have learned
    its test tracks, and its scores would then be no test.
    """
    warnings = []
    for model_id in model_ids:
        try:
            params = json.loads(model_row(store, model_id)["params"] or "{}")
            splits = assign_splits(tracks, str(params.get("split", "auto")), int(params.get("seed", 0)))
        except (AgfError, ValueError, TypeError, AttributeError) as exc:
            warnings.append(f"{name}: cannot tell which tracks {model_id} was trained on ({exc}); its scores may not be a test")
            continue
        seen = sum(splits.get(t) in ("training", "validation") for t in test_ids)
        if seen:
            warnings.append(f"{name}: {seen} of the {len(test_ids)} test tracks were in the training or validation split "
                            f"of {model_id} (--split {params.get('split', 'auto')} --seed {params.get('seed', 0)}): its "
                            "scores there are not a test; evaluate with the split and seed it was trained with")
    return warnings


#: Fewer test tracks than this and the scores' noise hides most differences between models.
MIN_CONCLUSIVE_TRACKS = 30


def inconclusive(y_true: list[str]) -> list[str]:
    """Why a test split cannot tell models apart, if it cannot: too few tracks, or one genre."""
    warnings = []
    if len(y_true) < MIN_CONCLUSIVE_TRACKS:
        warnings.append(f"only {len(y_true)} test tracks (fewer than {MIN_CONCLUSIVE_TRACKS}): the scores are too "
                        f"noisy to rank the models")
    if len(set(y_true)) == 1:
        warnings.append(f"every test track is {y_true[0]}: accuracy says nothing about telling genres apart")
    return warnings


def _align(probabilities: np.ndarray, model_classes: list[str], classes: list[str]) -> np.ndarray:
    out = np.zeros((len(probabilities), len(classes)), np.float32)
    for j, c in enumerate(model_classes):
        out[:, classes.index(c)] = probabilities[:, j]
    return out


def _plot_confusion(report: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = confusion_figure(report)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_figure(report: dict):
    """A matplotlib figure: one confusion matrix per model of ``report``, each cell shaded by the
    share of its true genre's tracks and its count written white on dark cells, black on light."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["models"])
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(5 * max(1, len(names)), 4.6), squeeze=False)
    classes = report["classes"]
    for ax, name in zip(axes[0], names):
        matrix = np.asarray(report["models"][name]["confusion"])
        # shaded by each true genre's share (a row sums to 1), so rare genres read as clearly as common ones
        share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        for (i, j), v in np.ndenumerate(matrix):
            if v:  # white on dark cells, black on light ones
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
        acc = report["models"][name]["accuracy"]
        ax.set_title(f"{name.split(' (')[0]}\naccuracy {acc:.2f}", fontsize=9)
        ax.set_xlabel("predicted genre")
        ax.set_ylabel("true genre (shade: share of its tracks)")
    fig.tight_layout()
    return fig


def _plot_reliability(report: dict, path: Path) -> None:
    """Accuracy against confidence per model, the diagonal being perfect calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="calibrated")
    for name, m in report["models"].items():
        points = [(c, a) for c, a in zip(m["reliability"]["confidence"], m["reliability"]["accuracy"]) if c is not None]
        ax.plot(*zip(*points), marker="o", label=f"{name.split(' (')[0]} (ECE {m['ece']:.3f})")
    ax.set_xlabel("confidence (top genre's probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"reliability on {report['test_tracks']} test tracks", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_rows(report: dict) -> list[dict]:
    """One row per model: the side-by-side table ``agf evaluate`` prints."""
    return [{"model": name, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "log_loss": m["log_loss"],
             "ece": m["ece"]} for name, m in report["models"].items()]

"""The map: the artists of a vector space in 2-D, as a picture."""

from pathlib import Path

import numpy as np

from agf.app.indexing import artist_vectors
from agf.errors import AgfError
from agf.store import Store
from agf.store.artists import ArtistDirectory, artist_rows


#: Okabe and Ito's colour-blind-safe palette; past 8 genres the marker shape changes too.
PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")
MARKERS = ("o", "s", "^", "D")


def draw_map(store: Store, space: str, out: Path, method: str = "pca", labels: int = 15) -> dict:
    """Save :func:`map_figure` of ``space`` as the PNG ``out``; returns what was drawn."""
    import matplotlib.pyplot as plt

    fig, named, artists = map_figure(store, space, method, labels)
    out = Path(out)
    fig.savefig(out, dpi=110, bbox_inches="tight")  # "tight": the legends beside the axes stay in the picture
    plt.close(fig)
    return {"space": space, "artists": artists, "method": method, "named": named, "file": str(out)}


def map_points(store: Store, space: str, method: str = "pca") -> dict:
    """The artists of ``space`` in 2-D, for a page to draw: ``{"space", "axes": [x, y], "points":
    [{"artist_id", "name", "top_genre", "tracks", "x", "y"}]}``."""
    ids, matrix = _space_vectors(store, space)
    xy, axes = project(matrix, method)
    facts = ArtistDirectory(artist_rows(store)).by_id
    return {"space": space, "method": method, "axes": list(axes), "points": [
        {"artist_id": int(i), "name": facts[i]["name"], "top_genre": facts[i]["top_genre"] or "unknown",
         "tracks": facts[i]["tracks"], "x": round(float(x), 5), "y": round(float(y), 5)} for i, (x, y) in zip(ids, xy)]}


def _space_vectors(store: Store, space: str) -> tuple[list[int], np.ndarray]:
    vectors = artist_vectors(store)
    if space not in vectors:
        raise AgfError(f"no artist vectors for space {space!r}; spaces are: {', '.join(vectors) or 'none (run agf index build)'}")
    ids, matrix = vectors[space]
    if len(ids) < 3:
        raise AgfError(f"space {space!r} has {len(ids)} artists: too few to draw")
    return ids, matrix


def map_figure(store: Store, space: str, method: str = "pca", labels: int = 15):
    """The artists of ``space`` in 2-D as a matplotlib figure: colour and shape say the top genre,
    size the number of tracks (each with its legend); each genre's largest artists are named
    where their names cover no other. Returns (figure, names placed, number of artists)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids, matrix = _space_vectors(store, space)
    xy, axis_names = project(matrix, method)
    facts = ArtistDirectory(artist_rows(store)).by_id
    genre_of = [facts[i]["top_genre"] or "unknown" for i in ids]
    tracks = np.array([facts[i]["tracks"] for i in ids])
    fig, ax = plt.subplots(figsize=(9.5, 7))
    for g, genre in enumerate(sorted(set(genre_of))):
        mask = np.array([x == genre for x in genre_of])
        ax.scatter(xy[mask, 0], xy[mask, 1], s=_size(tracks[mask]), color=PALETTE[g % len(PALETTE)],
                   marker=MARKERS[g // len(PALETTE) % len(MARKERS)], label=genre, alpha=0.8, edgecolors="white",
                   linewidths=0.5)
    genre_legend = ax.legend(title="top genre", fontsize=7, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    for handle in genre_legend.legend_handles:  # one size in the genre legend: size has its own legend
        handle.set_sizes([40])
    ax.add_artist(genre_legend)
    examples = sorted({int(v) for v in np.quantile(tracks, [0, 0.5, 1])})
    ax.legend([ax.scatter([], [], s=_size(np.array([n])), color="0.6") for n in examples],
              [f"{n} track{'s' * (n != 1)}" for n in examples], title="size", fontsize=7, title_fontsize=8,
              loc="lower left", bbox_to_anchor=(1.01, 0))
    named = _label_without_overlap(fig, ax, xy, [facts[i]["name"] for i in ids], _labelled_first(genre_of, tracks)[:labels])
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(f"{len(ids)} artists in {space} ({'t-SNE' if method == 'tsne' else 'PCA'}); the largest of each "
                 f"genre named where the names fit", fontsize=10)
    return fig, named, len(ids)


def project(matrix: np.ndarray, method: str) -> tuple[np.ndarray, tuple[str, str]]:
    """Rows of ``matrix`` (n, dim) in 2-D (n, 2) by ``pca`` or ``tsne``, and the names of the two axes."""
    if method == "tsne":
        from sklearn.manifold import TSNE

        xy = TSNE(2, perplexity=min(30, len(matrix) - 1), random_state=0, init="pca").fit_transform(matrix)
        return xy, ("t-SNE dimension 1", "t-SNE dimension 2")
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(2, random_state=0).fit(matrix)
        share = pca.explained_variance_ratio_
        return pca.transform(matrix), (f"principal component 1 ({share[0]:.0%} of the variance)",
                                       f"principal component 2 ({share[1]:.0%} of the variance)")
    raise AgfError(f"unknown projection {method!r}; choose pca or tsne")


def _labelled_first(genre_of: list[str], tracks: np.ndarray) -> list[int]:
    """Artists in the order to name them: each genre's largest, then each genre's second, ..."""
    by_genre: dict[str, list[int]] = {}
    for i in np.argsort(-tracks, kind="stable"):
        by_genre.setdefault(genre_of[i], []).append(int(i))
    rank = {i: r for members in by_genre.values() for r, i in enumerate(members)}
    return sorted(rank, key=lambda i: (rank[i], -tracks[i], i))


def _size(tracks: np.ndarray) -> np.ndarray:
    return 14 + 8 * tracks


def _label_without_overlap(fig, ax, xy: np.ndarray, names: list[str], order: list[int]) -> list[str]:
    """Name the points of ``order`` (most important first) beside them, trying four corners and
    skipping a name that would cover one already placed; returns the names placed."""
    renderer = fig.canvas.get_renderer()
    placed, named = [], []
    for i in order:
        for dx, dy, ha, va in ((4, 4, "left", "bottom"), (-4, 4, "right", "bottom"), (4, -4, "left", "top"),
                               (-4, -4, "right", "top")):
            text = ax.annotate(names[i], xy[i], fontsize=7, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va)
            box = text.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(other) for other in placed):
                placed.append(box)
                named.append(names[i])
                break
            text.remove()
    return named

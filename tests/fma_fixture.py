"""A tiny FMA in FMA's own layout: fma_metadata/{tracks,genres}.csv and fma_small/000/000002.mp3."""

import csv
from pathlib import Path

import soundfile as sf

from agf.ingest.synth import GENRES, _artist, render_track

import numpy as np

# genre_id, #tracks, parent, title, top_level — as in FMA's genres.csv
GENRE_ROWS = [(12, 2, 0, "Rock", 12), (25, 1, 12, "Punk", 12), (15, 2, 0, "Electronic", 15), (236, 1, 15, "Techno", 15)]
# track_id, artist (id, name), album (id, title), genre_top, genres, genres_all, split, subset
TRACKS = [
    (2, 1, "AWOL", 1, "AWOL - A Way Of Life", "Rock", "[25]", "[12, 25]", "training", "small"),
    (3, 1, "AWOL", 1, "AWOL - A Way Of Life", "Rock", "[12]", "[12]", "training", "small"),
    (1005, 7, "Kurt Vile", 4, "Constant Hitmaker", "Electronic", "[236]", "[15, 236]", "test", "small"),
    (1006, 7, "Kurt Vile", 4, "Constant Hitmaker", "Electronic", "[15]", "[15]", "validation", "medium"),
    (2000, 9, "Absent Artist", 5, "Nowhere", "Rock", "[12]", "[12]", "training", "small"),  # no audio file
]
COLUMNS = [
    ("album", "id"), ("album", "title"), ("artist", "id"), ("artist", "location"), ("artist", "name"),
    ("set", "split"), ("set", "subset"), ("track", "duration"), ("track", "genre_top"), ("track", "genres"),
    ("track", "genres_all"), ("track", "tags"), ("track", "title"),
]


ECHONEST = [("audio_features", "acousticness"), ("audio_features", "tempo"), ("metadata", "artist_name"),
            ("social_features", "artist_hotttnesss"), ("temporal_features", "000"), ("temporal_features", "001")]
ECHONEST_ROWS = {2: [0.41, 165.9, "AWOL", 0.39, 0.877, 0.588], 1005: [0.01, 122.0, "Kurt Vile", 0.51, 0.1, -0.2]}


def released_features(track_id: int) -> np.ndarray:
    """What FMA's features.py gives the fixture's audio of ``track_id`` (track 2000's, which is not
    written, is rendered the same way): the values its features.csv releases."""
    from agf.ingest.features import fma_features_reference

    return fma_features_reference(_audio(next(r for r in TRACKS if r[0] == track_id)), 22050)


def _audio(row) -> np.ndarray:
    style = GENRES[0] if row[5] == "Rock" else GENRES[1]
    return render_track(style, _artist(style, row[1], np.random.default_rng(row[1])), [TRACKS.index(row)], seconds=4.0)


def _write_released(meta: Path) -> None:
    from agf.ingest.features import FMA_COLUMNS

    with open(meta / "features.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        for label, level in (("feature", 0), ("statistics", 1), ("number", 2)):
            writer.writerow([label] + [c[level] for c in FMA_COLUMNS])
        writer.writerow(["track_id"] + [""] * len(FMA_COLUMNS))
        for row in TRACKS:
            writer.writerow([row[0]] + [f"{v:.10e}" for v in released_features(row[0])])
    with open(meta / "echonest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerows([[""] + ["echonest"] * len(ECHONEST), [""] + [g for g, _ in ECHONEST],
                          [""] + [n for _, n in ECHONEST], ["track_id"] + [""] * len(ECHONEST)])
        writer.writerows([[tid] + values for tid, values in ECHONEST_ROWS.items()])


def write_fma(root: Path, drop_column: tuple[str, str] | None = None, released: bool = False,
              rate: int = 22050) -> tuple[Path, Path]:
    """Write the fixture under ``root``; return (fma_metadata dir, fma_small dir). With ``released``,
    also features.csv (computed here from the fixture's audio, as FMA's features.py does) and
    echonest.csv."""
    meta, audio = root / "fma_metadata", root / "fma_small"
    meta.mkdir(parents=True, exist_ok=True)
    columns = [c for c in COLUMNS if c != drop_column]
    with open(meta / "tracks.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([""] + [c[0] for c in columns])
        writer.writerow([""] + [c[1] for c in columns])
        writer.writerow(["track_id"] + [""] * len(columns))
        for tid, aid, aname, alb, albtitle, top, genres, genres_all, split, subset in TRACKS:
            values = {
                ("album", "id"): alb, ("album", "title"): albtitle, ("artist", "id"): aid,
                ("artist", "location"): "Brooklyn, NY", ("artist", "name"): aname, ("set", "split"): split,
                ("set", "subset"): subset, ("track", "duration"): 30, ("track", "genre_top"): top,
                ("track", "genres"): genres, ("track", "genres_all"): genres_all,
                ("track", "tags"): "['lo-fi', 'garage']", ("track", "title"): f"Track {tid}",
            }
            writer.writerow([tid] + [values[c] for c in columns])
    with open(meta / "genres.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["genre_id", "#tracks", "parent", "title", "top_level"])
        writer.writerows(GENRE_ROWS)
    for row in TRACKS[:4]:
        write_audio(audio, row[0], rate)
    if released:
        _write_released(meta)
    return meta, audio


def write_audio(audio: Path, track_id: int, rate: int = 22050) -> Path:
    """The fixture's MP3 of ``track_id`` in FMA's layout under ``audio``, at ``rate`` Hz."""
    import soxr

    path = audio / f"{track_id // 1000:03d}" / f"{track_id:06d}.mp3"
    path.parent.mkdir(parents=True, exist_ok=True)
    y = _audio(next(r for r in TRACKS if r[0] == track_id))
    sf.write(path, soxr.resample(y, 22050, rate) if rate != 22050 else y, rate, format="MP3")
    return path

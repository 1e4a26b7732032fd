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


def write_fma(root: Path, drop_column: tuple[str, str] | None = None) -> tuple[Path, Path]:
    """Write the fixture under ``root``; return (fma_metadata dir, fma_small dir)."""
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
    for i, row in enumerate(TRACKS[:4]):
        tid = row[0]
        path = audio / f"{tid // 1000:03d}" / f"{tid:06d}.mp3"
        path.parent.mkdir(parents=True, exist_ok=True)
        style = GENRES[0] if row[5] == "Rock" else GENRES[1]
        y = render_track(style, _artist(style, row[1], np.random.default_rng(row[1])), [i], seconds=4.0)
        sf.write(path, y, 22050, format="MP3")
    return meta, audio

"""FMA's released features: ``fma_metadata/features.csv`` and ``echonest.csv``, read as vectors.

Both files have several header rows naming each column (``features.csv``: feature, statistics,
number; ``echonest.csv``: a top level, a group and a name), then a ``track_id`` row, then one row
per track. They are parsed by pyarrow's CSV reader (FMA full's ``features.csv`` is 106,574 rows
of 518 numbers) and returned as float32 vectors by track id: ``fma`` in the column order of
:data:`agf.ingest.features.FMA_COLUMNS`, ``echonest`` as its numeric groups in the file's order.
A track whose row holds a missing or non-finite value gets no vector.
"""

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from agf.errors import AgfError

#: echonest.csv's groups of numbers (its ``metadata`` and ``ranks`` groups are not audio features).
ECHONEST_GROUPS = ("audio_features", "social_features", "temporal_features")


def read_released(metadata_dir: Path, track_ids: set[int]) -> dict[int, dict[str, np.ndarray]]:
    """The released feature vectors of ``track_ids`` that an ``fma_metadata`` folder holds.

    Returns ``{track_id: {"fma": (518,), "echonest": (n,)}}`` with the sets each track has.
    """
    from agf.ingest.features import FMA_COLUMNS

    released: dict[int, dict[str, np.ndarray]] = {}
    features, echonest = Path(metadata_dir) / "features.csv", Path(metadata_dir) / "echonest.csv"
    if features.exists():
        header = _header(features, 3)
        where = {column: j for j, column in enumerate(zip(*header))}
        missing = [c for c in FMA_COLUMNS if c not in where]
        if missing:
            raise AgfError(f"{features} lacks {len(missing)} of FMA's 518 feature columns (first: {'.'.join(missing[0])})")
        _collect(released, "fma", features, len(header), [where[c] for c in FMA_COLUMNS], track_ids)
    if echonest.exists():
        header = _header(echonest, 3)
        chosen = [j for j, (_, group, _) in enumerate(zip(*header)) if group in ECHONEST_GROUPS]
        if chosen:
            _collect(released, "echonest", echonest, len(header), chosen, track_ids)
    return released


def _header(path: Path, rows: int) -> list[list[str]]:
    """The first ``rows`` header rows, without their first cell (the row's label)."""
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            reader = csv.reader(fh)
            header = [next(reader)[1:] for _ in range(rows)]
    except (OSError, StopIteration, csv.Error) as exc:
        raise AgfError(f"cannot read the header of {path}: {exc}") from None
    if len({len(r) for r in header}) != 1:
        raise AgfError(f"{path}: its {rows} header rows have different lengths")
    return [[cell.strip() for cell in row] for row in header]


def _collect(released: dict, name: str, path: Path, header_rows: int, columns: list[int], track_ids: set[int]) -> None:
    """Parse ``path``'s body and add the vectors (``columns``, 0-based after the id) of ``track_ids``."""
    try:
        table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(skip_rows=header_rows + 1,
                                                                   autogenerate_column_names=True))
    except (pa.ArrowInvalid, OSError) as exc:
        raise AgfError(f"cannot read {path}: {' '.join(str(exc).split())[:300]}") from None
    ids = table.column(0).to_numpy(zero_copy_only=False)
    keep = np.flatnonzero(np.isin(ids, np.fromiter(track_ids, np.int64, len(track_ids))))
    if not len(keep):
        return
    try:
        matrix = np.column_stack([table.column(j + 1).take(keep).cast(pa.float32()).to_numpy(zero_copy_only=False)
                                  for j in columns])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, IndexError) as exc:
        raise AgfError(f"{path}: a feature column is not numeric ({' '.join(str(exc).split())[:200]})") from None
    for track_id, vector in zip(ids[keep].tolist(), matrix.astype(np.float32)):
        if np.isfinite(vector).all():
            released.setdefault(int(track_id), {})[name] = vector

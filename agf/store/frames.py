"""The frame cache: one float16 ``.npy`` matrix per track and kind, memory-mapped on read.

``frames/<kind>/<track_id // 1000:03d>/<track_id>.npy`` holds an array of shape
(n_frames, n_bins), time first so that a crop of frames is one contiguous slice. The path is a
function of the track id, so a track's frames are found in O(1). Files are written to a
temporary name and renamed, so a reader never sees half a matrix.
"""

import os
from pathlib import Path

import numpy as np


class FrameCache:
    """Per-track frame matrices of one kind (``logmel`` or ``mfcc``) under ``root``."""

    def __init__(self, root: Path, kind: str):
        self.root = Path(root) / "frames" / kind
        self.kind = kind

    def path(self, track_id: int) -> Path:
        return self.root / f"{int(track_id) // 1000:03d}" / f"{int(track_id)}.npy"

    def write(self, track_id: int, frames: np.ndarray) -> None:
        """Store ``frames`` (n_frames, n_bins) as float16 for ``track_id``, atomically."""
        path = self.path(track_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(frames, dtype=np.float16))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def read(self, track_id: int) -> np.ndarray:
        """The frames of ``track_id``, memory-mapped read-only: (n_frames, n_bins) float16."""
        path = self.path(track_id)
        if not path.exists():
            raise KeyError(f"no {self.kind} frames for track {track_id}")
        return np.load(path, mmap_mode="r")

    def __contains__(self, track_id: int) -> bool:
        return self.path(track_id).exists()

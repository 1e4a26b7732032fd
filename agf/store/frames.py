"""The frame cache: one float16 ``.npy`` matrix per track and kind, memory-mapped on read.

``frames/<kind>/<track_id // 1000:03d>/<track_id>.npy`` holds an array of shape
(n_frames, n_bins), time first so that a crop of frames is one contiguous slice. The path is a
function of the track id, so a track's frames are found in O(1). Files are written to a
temporary name and renamed, so a reader never sees half a matrix.
"""

import os
import stat
from pathlib import Path

import numpy as np

from agf.errors import AgfError
from agf.store.paths import inside


class FrameCache:
    """Per-track frame matrices of one kind (``logmel`` or ``mfcc``) under ``root``.

    Every folder is checked once to lie inside the store (a hostile store could make one a
    symlink leading out) and every file read must be a regular file.
    """

    def __init__(self, root: Path, kind: str):
        self.store_root = Path(root)
        self.root = self.store_root / "frames" / kind
        self.kind = kind
        self._checked: set[Path] = set()

    def path(self, track_id: int) -> Path:
        return self.root / f"{int(track_id) // 1000:03d}" / f"{int(track_id)}.npy"

    def _folder(self, track_id: int, create: bool = False) -> Path:
        folder = self.path(track_id).parent
        if folder not in self._checked:
            if create:
                folder.mkdir(parents=True, exist_ok=True)
            inside(self.store_root, folder.relative_to(self.store_root), f"the {self.kind} frame cache")
            self._checked.add(folder)
        return folder

    def write(self, track_id: int, frames: np.ndarray) -> None:
        """Store ``frames`` (n_frames, n_bins) as float16 for ``track_id``, atomically."""
        path = self._folder(track_id, create=True) / self.path(track_id).name
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
        path = self._folder(track_id) / self.path(track_id).name
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            raise AgfError(f"the {self.kind} frames of track {track_id} are missing ({path}): the store is damaged, "
                           f"run `agf check`") from None
        if not stat.S_ISREG(mode):
            raise AgfError(f"{self.kind} frames of track {track_id}: {path} is not a regular file: refused")
        try:
            return np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as exc:
            raise AgfError(f"the {self.kind} frames of track {track_id} are damaged ({exc}): run `agf check`") from None

    def __contains__(self, track_id: int) -> bool:
        return self.path(track_id).exists()

"""The frame cache: one float16 ``.npy`` matrix per track and kind, memory-mapped or read whole.

``frames/<kind>/<track_id // 1000:03d>/<track_id>.npy`` holds an array of shape
(n_frames, n_bins), time first so that a crop of frames is one contiguous slice. The path is a
function of the track id, so a track's frames are found in O(1). Files are written to a
temporary name and renamed, so a reader never sees half a matrix.
"""

import os
import re
import stat
from pathlib import Path

import numpy as np

from agf.errors import AgfError
from agf.store.paths import inside, open_regular

#: The header ``np.save`` writes for a float16 matrix (format 1.0), which :meth:`FrameCache.load`
#: parses itself: numpy's own parser compiles the header's text, longer than the read takes.
_NPY_HEADER = re.compile(rb"\x93NUMPY\x01\x00..\{'descr': '<f2', 'fortran_order': False, 'shape': \((\d+), (\d+)\), \} *\n",
                         re.DOTALL)


class FrameCache:
    """Per-track frame matrices of one kind (``logmel`` or ``mfcc``) under ``root``.

    Every folder is checked once to lie inside the store (a hostile store could make one a
    symlink leading out), every file read must be a regular file, and every matrix read must be
    one agf could have written: numbers, at least one frame, ``bins`` wide where given, finite.
    """

    def __init__(self, root: Path, kind: str, bins: int | None = None):
        self.store_root = Path(root)
        self.root = self.store_root / "frames" / kind
        self.kind, self.bins = kind, bins
        self._checked: set[Path] = set()

    @classmethod
    def of(cls, store, kind: str) -> "FrameCache":
        """``kind``'s cache in ``store`` (a :class:`~agf.store.Store`), its matrices as wide as
        the store's settings make them: MFCC coefficients, or mel bands."""
        params = store.config["frames"][kind]
        return cls(store.root, kind, int(params["n_mfcc"] if "n_mfcc" in params else params["n_mels"]))

    def path(self, track_id: int) -> Path:
        return self.root / f"{int(track_id) // 1000:03d}" / f"{int(track_id)}.npy"

    def _checked_path(self, track_id: int, create: bool = False) -> Path:
        """The file of ``track_id``, its folder checked (once) to lie inside the store."""
        path = self.path(track_id)
        if path.parent not in self._checked:
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            inside(self.store_root, path.parent.relative_to(self.store_root), f"the {self.kind} frame cache")
            self._checked.add(path.parent)
        return path

    def write(self, track_id: int, frames: np.ndarray) -> None:
        """Store ``frames`` (n_frames, n_bins) as float16 for ``track_id``, atomically."""
        path = self._checked_path(track_id, create=True)
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
        path = self._regular_file(track_id)
        try:
            frames = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as exc:
            raise self._damaged(track_id, exc) from None
        return self._valid(track_id, frames)

    def load(self, track_id: int) -> np.ndarray:
        """The frames of ``track_id`` read into memory: (n_frames, n_bins) float16.

        For a pass that reads each track once (several times faster than :meth:`read` per file,
        whose memory map costs more to set up than a clip's frames take to read).
        """
        path = self._regular_file(track_id)
        try:
            with open_regular(path) as fh:  # checked as it is opened: no FIFO swapped in after the check blocks it
                data = fh.read()
        except OSError as exc:
            raise self._damaged(track_id, exc) from None
        header = _NPY_HEADER.match(data)
        if header is None:  # not as agf writes it: numpy's own reader, and its checks
            return np.array(self.read(track_id))
        shape = int(header[1]), int(header[2])
        if len(data) - header.end() != 2 * shape[0] * shape[1]:
            raise self._damaged(track_id, ValueError(f"{len(data)} bytes do not hold a {shape} matrix"))
        return self._valid(track_id, np.frombuffer(data, "<f2", offset=header.end()).reshape(shape))

    def _valid(self, track_id: int, frames: np.ndarray) -> np.ndarray:
        """``frames``, if a reader can use them; else the error that names them damaged."""
        wide = frames.ndim == 2 and (self.bins is None or frames.shape[1] == self.bins)
        if frames.dtype.kind not in "fiu" or not wide or not len(frames):
            raise self._damaged(track_id, ValueError(f"{frames.dtype} of shape {frames.shape}, not (frames, "
                                                     f"{self.bins or 'bins'})"))
        if not _all_finite(frames):
            raise self._damaged(track_id, ValueError("values that are not finite"))
        return frames

    def _regular_file(self, track_id: int) -> Path:
        path = self._checked_path(track_id)
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            raise AgfError(f"the {self.kind} frames of track {track_id} are missing ({path}): the store is damaged, "
                           f"run `agf check`") from None
        if not stat.S_ISREG(mode):
            raise AgfError(f"{self.kind} frames of track {track_id}: {path} is not a regular file: refused")
        return path

    def _damaged(self, track_id: int, exc: Exception) -> AgfError:
        return AgfError(f"the {self.kind} frames of track {track_id} are damaged ({exc}): run `agf check`")

    def __contains__(self, track_id: int) -> bool:
        return self.path(track_id).exists()


def _all_finite(frames: np.ndarray) -> bool:
    if frames.dtype == np.float16 and frames.size:
        # not finite exactly when its 5 exponent bits are all set: ~25x quicker than isfinite
        return bool((frames.view(np.uint16) & 0x7C00).max() < 0x7C00)
    return bool(np.isfinite(frames).all())

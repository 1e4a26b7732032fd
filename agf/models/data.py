"""What the networks read: splits of tracks, and patches of the stored log-mel spectrograms.

Crop policy (documented in docs/METHOD.md; the authors leave it open): training draws one random 43-frame patch
per track per draw; inference cuts a clip into consecutive non-overlapping 43-frame patches
(the last one aligned to the clip's end, so every frame is seen) and averages over them.
"""

from collections import OrderedDict, defaultdict

import numpy as np

from agf.errors import AgfError
from agf.models.cnn import PATCH_FRAMES
from agf.store import FrameCache, Store

SPLITS = ("training", "validation", "test")


def assign_splits(tracks: list[dict], method: str = "artist", seed: int = 0,
                  fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> dict[int, str]:
    """Split tracks into training / validation / test.

    Parameters
    ----------
    tracks : list of dict
        Rows with ``track_id``, ``artist_id``, ``genre_top`` and ``split``.
    method : {'artist', 'random', 'stored'}
        'artist': no artist in two splits (the default; the paper's point), artists dealt out
        per majority genre so that each genre reaches every split when it has 3+ artists;
        'random': tracks dealt out at random, per genre; 'stored': the tracks' own ``split``
        column (FMA's ``set.split``), which ``auto`` picks whenever every track has one.
    """
    if method == "stored" or (method == "auto" and tracks and all(t.get("split") for t in tracks)):
        return {t["track_id"]: ("training" if t["split"] in ("train", "training") else t["split"]) for t in tracks}
    if method == "auto":
        method = "artist"
    if method not in ("artist", "random"):
        raise AgfError(f"unknown split {method!r}; choose artist, random or stored")
    rng = np.random.default_rng(seed)
    if method == "random":
        groups = defaultdict(list)
        for t in tracks:
            groups[t.get("genre_top") or ""].append(t["track_id"])
        return {tid: split for members in groups.values() for tid, split in _deal(sorted(members), fractions, rng).items()}
    genre_votes: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for t in tracks:
        genre_votes[t["artist_id"]][t.get("genre_top") or ""] += 1
    groups = defaultdict(list)
    for artist, votes in sorted(genre_votes.items()):
        groups[max(sorted(votes), key=votes.get)].append(artist)
    artist_split = {a: s for members in groups.values() for a, s in _deal(members, fractions, rng).items()}
    return {t["track_id"]: artist_split[t["artist_id"]] for t in tracks}


def _deal(members: list, fractions, rng: np.random.Generator) -> dict:
    order = [members[i] for i in rng.permutation(len(members))]
    n = len(order)
    n_test = max(1, round(fractions[2] * n)) if n >= 3 else 0
    n_val = max(1, round(fractions[1] * n)) if n >= 3 else 0
    return {m: ("test" if i < n_test else "validation" if i < n_test + n_val else "training") for i, m in enumerate(order)}


class ClipFrames:
    """Log-mel matrices held in memory, by clip id: a frame source for :class:`PatchReader` (the
    store's is its frame cache)."""

    def __init__(self, clips: dict[int, np.ndarray]):
        self.clips = clips

    def read(self, clip_id: int) -> np.ndarray:
        """The clip's (n_frames, n_mels) log-mel matrix."""
        return self.clips[clip_id]


class PatchReader:
    """Standardised log-mel patches of clips: from a frame ``source`` (anything with
    ``read(clip_id) -> (n_frames, n_mels)``), by clip id.

    Keeps at most ``max_open`` matrices at hand (a process may hold only ~65k memory maps).
    """

    def __init__(self, source, n_mels: int, mean: np.ndarray | None = None, std: np.ndarray | None = None,
                 max_open: int = 4096):
        self.cache, self.n_mels = source, n_mels
        self.mean, self.std = mean, std
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()
        self.max_open = max_open

    @classmethod
    def of_store(cls, store: Store, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> "PatchReader":
        """The stored tracks' patches, read from their memory-mapped frame files."""
        cache = FrameCache.of(store, "logmel")
        return cls(cache, cache.bins, mean, std)

    def frames(self, track_id: int) -> np.ndarray:
        """(n_frames, n_mels) float16, memory-mapped."""
        if track_id in self._open:
            self._open.move_to_end(track_id)
            return self._open[track_id]
        frames = self.cache.read(track_id)
        self._open[track_id] = frames
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return frames

    def fit_standardisation(self, track_ids: list[int], max_tracks: int = 500, seed: int = 0) -> None:
        """Per-mel-band mean and standard deviation over (a sample of) ``track_ids``."""
        rng = np.random.default_rng(seed)
        chosen = track_ids if len(track_ids) <= max_tracks else list(rng.choice(track_ids, max_tracks, replace=False))
        stacked = np.concatenate([np.asarray(self.frames(t), np.float32) for t in chosen])
        self.mean, self.std = stacked.mean(axis=0), np.maximum(stacked.std(axis=0), 1e-3)

    def _standardise(self, patch: np.ndarray) -> np.ndarray:
        return ((np.asarray(patch, np.float32) - self.mean) / self.std).T  # (n_mels, frames)

    def crop(self, track_id: int, rng: np.random.Generator) -> np.ndarray:
        """One random patch, (n_mels, 43) float32."""
        frames = self.frames(track_id)
        start = int(rng.integers(0, max(1, len(frames) - PATCH_FRAMES + 1)))
        return self._standardise(_pad(frames[start : start + PATCH_FRAMES]))

    def inference_frames(self, track_id: int) -> np.ndarray:
        """The clip's frames as inference reads them: (max(n_frames, 43), n_mels) float16, a clip
        shorter than a patch padded with its last frame.

        Read past the cache of mapped files: inference reads each clip once, and a map kept
        open would hold its pages in memory for the rest of a long run.
        """
        frames = self._open.get(track_id)
        return _pad(self.cache.read(track_id) if frames is None else frames)

    def patches(self, track_id: int) -> np.ndarray:
        """Every inference patch of the clip (see :func:`patch_starts`), standardised: (n, n_mels, 43)."""
        frames = self.inference_frames(track_id)
        return np.ascontiguousarray(self._standardise(frames)[:, patch_windows(len(frames))].transpose(1, 0, 2))


def patch_starts(n_frames: int) -> np.ndarray:
    """First frames of a clip's inference patches: consecutive, non-overlapping, the last one
    aligned to the clip's end so that every frame is seen. (n_patches,) int64; ``n_frames`` >= 43."""
    starts = np.arange(0, n_frames - PATCH_FRAMES + 1, PATCH_FRAMES)
    return starts if starts[-1] + PATCH_FRAMES == n_frames else np.append(starts, n_frames - PATCH_FRAMES)


def patch_windows(n_frames: int) -> np.ndarray:
    """Frame indices of each inference patch: (n_patches, 43) int64."""
    return patch_starts(n_frames)[:, None] + np.arange(PATCH_FRAMES)


def _pad(frames: np.ndarray) -> np.ndarray:
    if len(frames) >= PATCH_FRAMES:
        return frames
    return np.concatenate([frames, np.repeat(frames[-1:], PATCH_FRAMES - len(frames), axis=0)])

"""Feature extractors over one decoded clip, sharing every spectrogram they can.

A :class:`Spectra` object caches the STFTs and the CQT of one clip so that the frame matrices
and every feature set are computed from one decode and as few transforms as possible.
:func:`fma_features_reference` is FMA's own ``features.py`` computation (one CQT, one STFT);
it is the reference the shared path is tested against and the baseline of ``bench/ingest.py``.
"""

from functools import cached_property, lru_cache

from agf.ingest.compiled import use_own_cache

use_own_cache()  # before librosa imports numba

import librosa  # noqa: E402
import numpy as np  # noqa: E402
from agf.ingest.constantq import cqt_magnitude  # noqa: E402
from agf.ingest.stft import power_spectrogram  # noqa: E402

#: The seven statistics of FMA's features.py, in the order its sorted columns use.
STATISTICS = ("kurtosis", "max", "mean", "median", "min", "skew", "std")
#: FMA feature name -> number of rows of its frame matrix.
FMA_FEATURE_SIZES = {
    "chroma_cens": 12,
    "chroma_cqt": 12,
    "chroma_stft": 12,
    "mfcc": 20,
    "rmse": 1,
    "spectral_bandwidth": 1,
    "spectral_centroid": 1,
    "spectral_contrast": 7,
    "spectral_rolloff": 1,
    "tonnetz": 6,
    "zcr": 1,
}
#: Column names of the 518-d ``fma`` vector: (feature, statistic, number), FMA's sorted order.
FMA_COLUMNS = [
    (name, stat, f"{i + 1:02d}")
    for name, size in FMA_FEATURE_SIZES.items()
    for stat in STATISTICS
    for i in range(size)
]
N_MFCC = 20
FEATURE_DIMS = {"mfcc": N_MFCC * 7, "dmfcc": 2 * N_MFCC * 7, "fma": len(FMA_COLUMNS)}


def statistics(frames: np.ndarray) -> np.ndarray:
    """The seven FMA statistics of each row of ``frames`` (n_rows, n_frames).

    Returns a float32 vector of length 7 * n_rows: statistic-major, in :data:`STATISTICS` order.
    Skew and kurtosis are scipy.stats' defaults (biased; Fisher's kurtosis), computed from the
    central moments directly, which is several times faster than calling scipy per statistic.
    """
    frames = np.asarray(frames, dtype=np.float64)
    mean = frames.mean(axis=1)
    centered = frames - mean[:, None]
    squared = centered * centered
    m2 = squared.mean(axis=1)
    m3 = (squared * centered).mean(axis=1)
    m4 = (squared * squared).mean(axis=1)
    # A constant row has no skew or kurtosis; FMA's data has 0 there, as scipy's nan becomes.
    flat = m2 <= (np.finfo(np.float64).eps * np.abs(mean)) ** 2
    with np.errstate(all="ignore"):
        skew = np.where(flat, 0.0, m3 / m2**1.5)
        kurtosis = np.where(flat, 0.0, m4 / m2**2 - 3.0)
    values = [kurtosis, frames.max(axis=1), mean, np.median(frames, axis=1), frames.min(axis=1), skew, np.sqrt(m2)]
    return np.nan_to_num(np.concatenate(values)).astype(np.float32)


def estimate_tuning(S: np.ndarray, *, sr: float, bins_per_octave: int = 12) -> float:
    """``librosa.estimate_tuning(S=S, sr=sr, bins_per_octave=...)``, to the bit, several times faster.

    librosa's pitch tracker works on every row of ``S``, then keeps the local maxima between
    150 and 4,000 Hz. Only those rows and their two neighbours decide anything (each step looks
    one row up and down), so they alone are computed here, with librosa's arithmetic: its
    parabolic shift in float64 from float32 neighbours, the rest in ``S``'s dtype.

    Parameters
    ----------
    S : np.ndarray, shape (1 + n_fft // 2, n_frames), float32
        A magnitude or power spectrogram.
    sr : float
        Its sample rate in Hz.
    bins_per_octave : int
        Bins per octave of the tuning's resolution.

    Returns
    -------
    float
        The tuning deviation in fractions of a bin, in [-0.5, 0.5).
    """
    S = np.abs(S)
    n_fft = 2 * (S.shape[0] - 1)
    frequencies = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
    rows = np.flatnonzero((frequencies >= 150.0) & (frequencies < min(4000.0, sr / 2)))
    if S.dtype != np.float32 or not len(rows) or rows[0] < 1 or rows[-1] + 1 >= len(S):
        return float(librosa.estimate_tuning(S=S, sr=sr, bins_per_octave=bins_per_octave))
    above = S * (S > 0.1 * S.max(axis=0))  # piptrack's threshold: a tenth of each frame's peak
    here, below, over = above[rows], above[rows - 1], above[rows + 1]
    peak_row, frame = np.nonzero((here > below) & (here >= over))
    row = rows[peak_row]
    centre, lower, upper = S[row, frame], S[row - 1, frame], S[row + 1, frame]
    curvature = (upper + lower).astype(np.float64) - 2 * centre.astype(np.float64)
    slope = (upper - lower).astype(np.float64) / 2
    shift = np.where(np.abs(slope) >= np.abs(curvature), 0.0,
                     -slope / np.where(curvature == 0, 1.0, curvature)).astype(np.float32)
    pitch = ((row + shift) * float(sr) / n_fft).astype(np.float32)
    magnitude = centre + np.float32(0.5) * ((upper - lower) / np.float32(2.0)) * shift
    voiced = pitch > 0
    threshold = np.median(magnitude[voiced]) if voiced.any() else 0.0
    return float(librosa.pitch_tuning(pitch[(magnitude >= threshold) & voiced], bins_per_octave=bins_per_octave))


@lru_cache(maxsize=32)
def mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)``, built once per process:
    (n_mels, 1 + n_fft // 2) float32, read-only."""
    filters = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)
    filters.flags.writeable = False
    return filters


@lru_cache(maxsize=32)
def _mel_bands(sr: int, n_fft: int, n_mels: int) -> tuple[tuple[int, int, np.ndarray], ...]:
    # each triangular filter's run of nonzero bins: (first, end, its weights there)
    bands = []
    for row in mel_filters(sr, n_fft, n_mels):
        nonzero = np.flatnonzero(row)
        first, end = (int(nonzero[0]), int(nonzero[-1]) + 1) if len(nonzero) else (0, 0)
        bands.append((first, end, row[first:end]))
    return tuple(bands)


def mel_spectrogram(power: np.ndarray, *, sr: int, n_mels: int) -> np.ndarray:
    """``mel_filters(sr, n_fft, n_mels) @ power``, each filter applied over its own bins only.

    A mel filter spans a few frequency bins (1.5 % of the matrix is nonzero for 128 bands of a
    1024-point transform): ~4x faster than the dense product, whose sums it equals to float32
    rounding.

    Parameters
    ----------
    power : np.ndarray, shape (1 + n_fft // 2, n_frames), float32
        Power spectrogram.
    sr : int
        Sampling rate in Hz.
    n_mels : int
        Number of mel bands.

    Returns
    -------
    np.ndarray, shape (n_mels, n_frames), float32
    """
    bands = _mel_bands(sr, 2 * (len(power) - 1), n_mels)
    mel = np.empty((n_mels, power.shape[1]), np.float32)
    for row, (first, end, weights) in enumerate(bands):
        np.matmul(weights, power[first:end], out=mel[row])
    return mel


class Spectra:
    """The transforms of one clip ``y`` at ``sr`` Hz, each computed once on first use.

    ``path`` and ``clip`` (start and end in seconds) name where the clip came from, for
    extractors that decode the file themselves (Essentia's MusicExtractor).
    """

    def __init__(self, y: np.ndarray, sr: int, path=None, clip: tuple[float, float] | None = None):
        self.y = y
        self.sr = sr
        self.path, self.clip = path, clip
        self._stft: dict[tuple[int, int], np.ndarray] = {}
        self._log_mel: dict[tuple[int, int, int], np.ndarray] = {}

    def stft(self, n_fft: int, hop_length: int) -> np.ndarray:
        """Magnitude STFT, ``np.abs(librosa.stft(y, ...))`` to the bit: (1 + n_fft // 2, n_frames)."""
        key = (n_fft, hop_length)
        if key not in self._stft:
            self._stft[key] = np.abs(librosa.stft(self.y, n_fft=n_fft, hop_length=hop_length))
        return self._stft[key]

    def log_mel(self, n_fft: int, hop_length: int, n_mels: int) -> np.ndarray:
        """Log-amplitude mel spectrogram in dB, (n_mels, n_frames); computed once per parameters.

        librosa's ``power_to_db(melspectrogram(y=y, ...))`` to float rounding (within 0.01 dB
        near the 80-dB floor, less above; tested), in about half its time: the power spectrum
        straight from the transform, the mel filters built once per process, each applied over
        its own bins (:func:`mel_spectrogram`).
        """
        key = (n_fft, hop_length, n_mels)
        if key not in self._log_mel:
            power = power_spectrogram(self.y, n_fft=n_fft, hop_length=hop_length)
            self._log_mel[key] = librosa.power_to_db(mel_spectrogram(power, sr=self.sr, n_mels=n_mels))
        return self._log_mel[key]

    @cached_property
    def cqt(self) -> np.ndarray:
        """Magnitude constant-Q transform, 7 octaves of 12 bins from C1, hop 512: (84, n_frames)."""
        # FMA estimates the tuning (tuning=None); librosa would do it from its own STFT of y,
        # which is the cached n_fft 2048 / hop 512 magnitude STFT: reuse that.
        tuning = estimate_tuning(self.stft(2048, 512), sr=self.sr, bins_per_octave=12)
        return cqt_magnitude(self.y, sr=self.sr, tuning=tuning)


def logmel_frames(spectra: Spectra, n_fft: int, hop_length: int, n_mels: int, **_) -> np.ndarray:
    """The CNN input: log-mel spectrogram in dB, time first (n_frames, n_mels)."""
    return spectra.log_mel(n_fft, hop_length, n_mels).T


def mfcc_frames(spectra: Spectra, n_fft: int, hop_length: int, n_mels: int, n_mfcc: int, **_) -> np.ndarray:
    """Frame-level MFCC for the mfcc/dmfcc factors, time first (n_frames, n_mfcc)."""
    return librosa.feature.mfcc(S=spectra.log_mel(n_fft, hop_length, n_mels), n_mfcc=n_mfcc).T


def _clip_mfcc(spectra: Spectra, logmel: dict) -> np.ndarray:
    # The 20 track-level MFCCs come from the CNN's log-mel, which is computed anyway.
    return librosa.feature.mfcc(S=spectra.log_mel(logmel["n_fft"], logmel["hop_length"], logmel["n_mels"]), n_mfcc=N_MFCC)


def mfcc_vector(spectra: Spectra, logmel: dict) -> np.ndarray:
    """``mfcc`` feature set: the 7 statistics of 20 MFCCs, a 140-d float32 vector."""
    return statistics(_clip_mfcc(spectra, logmel))


def dmfcc_vector(spectra: Spectra, logmel: dict) -> np.ndarray:
    """``dmfcc`` feature set: the 7 statistics of the 20 MFCCs' first and second deltas (280-d)."""
    mfcc = _clip_mfcc(spectra, logmel)
    width = min(9, mfcc.shape[1] - (1 - mfcc.shape[1] % 2))
    if width < 3:
        raise ValueError("clip too short for MFCC deltas")
    deltas = [librosa.feature.delta(mfcc, order=o, width=width) for o in (1, 2)]
    return statistics(np.vstack(deltas))


#: FMA's features.py gives chroma_stft and the spectral features a spectrogram but no rate, so
#: librosa reads every file's bins as if sampled at 22,050 Hz. Its released values were made so,
#: at each file's own rate, and agf does the same to equal them (at 22,050 Hz it changes nothing).
FMA_SPECTRAL_SR = 22050


def spectral_rolloff(S: np.ndarray, *, sr: float, roll_percent: float = 0.85) -> np.ndarray:
    """``librosa.feature.spectral_rolloff(S=S, sr=sr)``, to the bit: (1, n_frames) Hz, float64.

    The lowest bin frequency whose cumulative energy reaches ``roll_percent`` of the frame's,
    found with one ``argmax`` where librosa takes the NaN-aware minimum of a full float64 matrix.
    ``S`` (1 + n_fft // 2, n_frames) must be non-negative.
    """
    total = np.cumsum(S, axis=-2)
    reached = total >= roll_percent * total[-1:]
    return librosa.fft_frequencies(sr=sr, n_fft=2 * (len(S) - 1))[np.argmax(reached, axis=0)][None, :]


def zero_crossing_rate(y: np.ndarray, *, frame_length: int = 2048, hop_length: int = 512,
                       threshold: float = 1e-10) -> np.ndarray:
    """``librosa.feature.zero_crossing_rate(y, frame_length=..., hop_length=...)``, to the bit:
    (1, n_frames), float64.

    librosa frames the edge-padded signal and counts sign changes inside every frame; here the
    changes are counted once along the signal and each frame's count is a difference of their
    running sum. Samples within ``threshold`` of zero count as zero (positive), as librosa's do.
    """
    padded = np.pad(y, frame_length // 2, mode="edge")
    negative = np.signbit(np.where(np.abs(padded) <= np.float64(threshold), 0.0, padded))
    changes = np.concatenate([[0], np.cumsum(negative[1:] != negative[:-1])])
    starts = np.arange(1 + (len(padded) - frame_length) // hop_length) * hop_length
    # a frame's crossings are those between its first and its last sample
    return ((changes[starts + frame_length - 1] - changes[starts]) / frame_length)[None, :]


def _centroid_and_bandwidth(S: np.ndarray, sr: float) -> tuple[np.ndarray, np.ndarray]:
    """librosa's spectral centroid and bandwidth (p = 2) of magnitudes ``S``, to the bit, from
    one normalisation of ``S`` where librosa makes one for each."""
    frequencies = librosa.fft_frequencies(sr=sr, n_fft=2 * (len(S) - 1))
    normalised = librosa.util.normalize(S, norm=1, axis=-2)
    centroid = np.sum(frequencies[:, None] * normalised, axis=-2, keepdims=True)
    # librosa's |centroid - f|, laid out frames first as its sum needs to be bit-equal; without
    # the absolute value, which squaring makes moot
    deviation = np.subtract.outer(centroid[0], frequencies).swapaxes(-2, -1)
    return centroid, np.sum(normalised * deviation**2, axis=-2, keepdims=True) ** (1.0 / 2)


def fma_matrices(spectra: Spectra) -> dict[str, np.ndarray]:
    """The eleven frame matrices FMA's ``features.py`` summarises, from the clip's one STFT
    (n_fft 2048, hop 512) and one CQT: name -> (rows, n_frames), the rows of
    :data:`FMA_FEATURE_SIZES`; each equal to the reference's to the bit (tested)."""
    y, sr, stft, cqt = spectra.y, spectra.sr, spectra.stft(2048, 512), spectra.cqt
    chroma_cens = librosa.feature.chroma_cens(C=cqt, sr=sr, n_chroma=12, n_octaves=7, bins_per_octave=12)
    power = stft**2
    # librosa's melspectrogram(sr=sr, S=power), to the bit, with its filters built once
    mel = np.einsum("...ft,mf->...mt", power, mel_filters(sr, 2 * (len(stft) - 1), 128), optimize=True)
    centroid, bandwidth = _centroid_and_bandwidth(stft, FMA_SPECTRAL_SR)
    return {
        "chroma_cens": chroma_cens,
        "chroma_cqt": librosa.feature.chroma_cqt(C=cqt, sr=sr, n_chroma=12, n_octaves=7, bins_per_octave=12),
        "chroma_stft": librosa.feature.chroma_stft(S=power, sr=FMA_SPECTRAL_SR, n_chroma=12,
                                                   tuning=estimate_tuning(power, sr=FMA_SPECTRAL_SR)),
        "mfcc": librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=20),
        "rmse": librosa.feature.rms(S=stft),
        "spectral_bandwidth": bandwidth,
        "spectral_centroid": centroid,
        "spectral_contrast": librosa.feature.spectral_contrast(S=stft, sr=FMA_SPECTRAL_SR, n_bands=6),
        "spectral_rolloff": spectral_rolloff(stft, sr=FMA_SPECTRAL_SR),
        "tonnetz": librosa.feature.tonnetz(chroma=chroma_cens, sr=sr),
        "zcr": zero_crossing_rate(y, frame_length=2048, hop_length=512),
    }


def _fma_vector(matrices: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([statistics(matrices[name]) for name in FMA_FEATURE_SIZES])


def fma_vector(spectra: Spectra, logmel: dict | None = None) -> np.ndarray:
    """``fma`` feature set: the 518 features of mdeff/fma's features.py, one STFT and one CQT.

    Column names and order are :data:`FMA_COLUMNS`. Chroma uses ``bins_per_octave=12``, which
    librosa 0.11 no longer assumes (its default of 36 would silently misread the CQT).
    """
    return _fma_vector(fma_matrices(spectra))


def fma_features_reference(y: np.ndarray, sr: int) -> np.ndarray:
    """The 518 FMA features as FMA's own ``features.py`` (mdeff/fma) computes them: the
    statistics of :func:`fma_matrices_reference`. The reference :func:`fma_vector` is tested
    against, and the baseline of ``bench/ingest.py``."""
    return _fma_vector(fma_matrices_reference(y, sr))


def fma_matrices_reference(y: np.ndarray, sr: int) -> dict[str, np.ndarray]:
    """FMA's frame matrices as its own ``features.py`` (mdeff/fma) computes them.

    Its structure: one CQT (chroma_cqt, chroma_cens and tonnetz from it) and one STFT
    magnitude (chroma_stft, rms, the spectral features and, through a mel spectrogram, the
    MFCC), on librosa 0.11 (``rms`` for ``rmse``, ``bins_per_octave=12`` for the chroma).
    """
    cqt = np.abs(librosa.cqt(y, sr=sr, hop_length=512, bins_per_octave=12, n_bins=7 * 12, tuning=None))
    chroma_cens = librosa.feature.chroma_cens(C=cqt, n_chroma=12, n_octaves=7, bins_per_octave=12)
    stft = np.abs(librosa.stft(y, n_fft=2048, hop_length=512))
    return {
        "zcr": librosa.feature.zero_crossing_rate(y, frame_length=2048, hop_length=512),
        "chroma_cqt": librosa.feature.chroma_cqt(C=cqt, n_chroma=12, n_octaves=7, bins_per_octave=12),
        "chroma_cens": chroma_cens,
        "tonnetz": librosa.feature.tonnetz(chroma=chroma_cens),
        "chroma_stft": librosa.feature.chroma_stft(S=stft**2, n_chroma=12),
        "rmse": librosa.feature.rms(S=stft),
        "spectral_centroid": librosa.feature.spectral_centroid(S=stft),
        "spectral_bandwidth": librosa.feature.spectral_bandwidth(S=stft),
        "spectral_contrast": librosa.feature.spectral_contrast(S=stft, n_bands=6),
        "spectral_rolloff": librosa.feature.spectral_rolloff(S=stft),
        "mfcc": librosa.feature.mfcc(S=librosa.power_to_db(librosa.feature.melspectrogram(sr=sr, S=stft**2)), n_mfcc=20),
    }


ESSENTIA_STATS = ["mean", "stdev", "median", "min", "max", "dmean", "dvar"]


def essentia_vector(spectra: Spectra, logmel: dict | None = None) -> np.ndarray:
    """``essentia`` feature set: MusicExtractor's low-level statistics over the same clip, flattened.

    MusicExtractor decodes the file itself at 44.1 kHz (as the authors analysed it), limited to
    the clip's span. Descriptors are taken in sorted name order; not standardised. Needs the
    optional AGPL ``essentia`` extra.
    """
    import essentia
    import essentia.standard as es

    essentia.log.infoActive = False
    start, end = spectra.clip
    pool, _ = es.MusicExtractor(lowlevelStats=ESSENTIA_STATS, rhythmStats=ESSENTIA_STATS, tonalStats=ESSENTIA_STATS,
                                startTime=start, endTime=end)(str(spectra.path))
    # Frame statistics and scalars have the same size on every track; raw event lists do not.
    names = sorted(n for n in pool.descriptorNames() if n.split(".")[0] in ("lowlevel", "rhythm", "tonal")
                   and np.asarray(pool[n]).dtype.kind in "fiu"
                   and (n.rsplit(".", 1)[-1] in ESSENTIA_STATS or np.ndim(pool[n]) == 0))
    return np.concatenate([np.ravel(np.asarray(pool[n], dtype=np.float32)) for n in names])


VECTOR_EXTRACTORS = {"mfcc": mfcc_vector, "dmfcc": dmfcc_vector, "fma": fma_vector, "essentia": essentia_vector}
FRAME_EXTRACTORS = {"logmel": logmel_frames, "mfcc": mfcc_frames}
#: What the factors and the CNN need; ``fma`` (FMA's 518 features, about 5x slower) is opt-in.
DEFAULT_FEATURES = ("mfcc", "dmfcc")


def parse_features(spec: str | None) -> tuple[str, ...]:
    """Validate a comma-separated list of feature sets (``None`` gives the defaults)."""
    from agf.errors import AgfError

    if not spec:
        return DEFAULT_FEATURES
    names = tuple(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    unknown = [n for n in names if n not in VECTOR_EXTRACTORS]
    if unknown:
        raise AgfError(f"unknown feature set(s) {unknown}; choose from {', '.join(VECTOR_EXTRACTORS)}")
    if "essentia" in names:
        try:
            import essentia  # noqa: F401, PLC0415
        except ImportError:
            raise AgfError("the essentia feature set needs the optional extra: pip install 'agf[essentia]'") from None
    return names

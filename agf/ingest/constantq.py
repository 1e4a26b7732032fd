"""FMA's constant-Q transform: librosa's, to the bit, with its filters built once per tuning.

``librosa.cqt`` builds its filter bases anew on every call (per octave, a wavelet per bin,
Fourier-transformed and made sparse): about 20 ms of the 46 a 30-s clip's CQT takes. The bases
depend only on the sampling rate and the tuning, which is estimated in steps of 0.01 bin, so a
process meets at most a hundred of them per rate. :func:`cqt_magnitude` follows librosa 0.11's
``vqt`` step for step, for the parameters FMA's ``features.py`` uses, with the bases kept and
the seven short per-octave transforms taken directly (46 to 14 ms a clip).
"""

from dataclasses import dataclass
from functools import lru_cache

import librosa
import numpy as np
import scipy.sparse

from agf.ingest.stft import centred_frames

HOP_LENGTH = 512
BINS_PER_OCTAVE = 12
N_OCTAVES = 7
N_BINS = N_OCTAVES * BINS_PER_OCTAVE
_WINDOW, _FILTER_SCALE, _NORM, _SPARSITY, _RES_TYPE = "hann", 1, 1, 0.01, "soxr_hq"


@dataclass(frozen=True)
class _Plan:
    """What the CQT of any clip at one rate and tuning shares: the early downsampling factor,
    each octave's sparse filter basis with its FFT length (top octave first), and the filter
    lengths that scale the result."""

    downsample: int
    octaves: tuple[tuple[scipy.sparse.csr_matrix, int], ...]
    lengths: np.ndarray


def cqt_magnitude(y: np.ndarray, *, sr: float, tuning: float) -> np.ndarray:
    """``np.abs(librosa.cqt(y, sr=sr, hop_length=512, bins_per_octave=12, n_bins=84, tuning=tuning))``,
    to the bit: 7 octaves of 12 bins from C1.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,), float32
    sr : float
        Sampling rate in Hz.
    tuning : float
        Deviation from A440 in fractions of a bin, as ``estimate_tuning`` gives it.

    Returns
    -------
    np.ndarray, shape (84, 1 + n_samples // 512), float32
    """
    plan = _plan(float(sr), float(tuning))
    hop = HOP_LENGTH
    if plan.downsample > 1:
        hop //= plan.downsample
        y = librosa.resample(y, orig_sr=plan.downsample, target_sr=1, res_type=_RES_TYPE, scale=True)
    responses = []
    for i, (basis, n_fft) in enumerate(plan.octaves):
        if i:
            hop //= 2
            y = librosa.resample(y, orig_sr=2, target_sr=1, res_type=_RES_TYPE, scale=True)
        responses.append(basis.dot(_spectrum(y, n_fft, hop)))
    cqt = _stack(responses)
    cqt /= np.sqrt(plan.lengths)[:, None]
    return np.abs(cqt)


@lru_cache(maxsize=256)
def _plan(sr: float, tuning: float) -> _Plan:
    fmin = librosa.note_to_hz("C1") * 2.0 ** (tuning / BINS_PER_OCTAVE)
    freqs = librosa.interval_frequencies(n_bins=N_BINS, fmin=fmin, intervals="equal", bins_per_octave=BINS_PER_OCTAVE,
                                         sort=True)
    alpha = _relative_bandwidth(freqs)
    _, cutoff = librosa.filters.wavelet_lengths(freqs=freqs, sr=sr, window=_WINDOW, filter_scale=_FILTER_SCALE, alpha=alpha)
    if cutoff > sr / 2:
        raise ValueError(f"a CQT up to {freqs[-1]:.0f} Hz needs a sampling rate above {2 * cutoff:.0f} Hz, not {sr:g}")
    downsample = 2 ** _early_downsamples(sr / 2, cutoff)
    octave_sr = sr = sr / downsample
    octaves = []
    for i in range(N_OCTAVES):
        bins = slice(N_BINS - BINS_PER_OCTAVE * (i + 1), N_BINS - BINS_PER_OCTAVE * i)
        basis, n_fft = _filter_basis(octave_sr, freqs[bins], alpha[bins])
        basis[:] *= np.sqrt(sr / octave_sr)  # librosa's compensation for the octave's downsampling
        octaves.append((basis, n_fft))
        octave_sr /= 2.0
    lengths, _ = librosa.filters.wavelet_lengths(freqs=freqs, sr=sr, window=_WINDOW, filter_scale=_FILTER_SCALE,
                                                 alpha=alpha)
    return _Plan(downsample, tuple(octaves), lengths)


def _relative_bandwidth(freqs: np.ndarray) -> np.ndarray:
    # librosa.filters._relative_bandwidth: each bin's relative bandwidth from its neighbours' spacing
    bpo = np.empty_like(freqs)
    logf = np.log2(freqs)
    bpo[0] = 1 / (logf[1] - logf[0])
    bpo[-1] = 1 / (logf[-1] - logf[-2])
    bpo[1:-1] = 2 / (logf[2:] - logf[:-2])
    return (2.0 ** (2 / bpo) - 1) / (2.0 ** (2 / bpo) + 1)


def _early_downsamples(nyquist: float, cutoff: float) -> int:
    # How often librosa halves the signal before the top octave: never below the filters' cutoff,
    # and only as often as the hop can still be halved once per remaining octave.
    by_cutoff = max(0, int(np.ceil(np.log2(nyquist / cutoff)) - 1) - 1)
    hop_halvings = (HOP_LENGTH & -HOP_LENGTH).bit_length() - 1  # 9 for 512
    by_hop = max(0, hop_halvings - N_OCTAVES + 1)
    return min(by_cutoff, by_hop)


def _filter_basis(sr: float, freqs: np.ndarray, alpha: np.ndarray) -> tuple[scipy.sparse.csr_matrix, int]:
    # librosa's __vqt_filter_fft: the octave's wavelets, normalised to the FFT length, their
    # non-negative frequencies made sparse
    basis, lengths = librosa.filters.wavelet(freqs=freqs, sr=sr, filter_scale=_FILTER_SCALE, norm=_NORM, pad_fft=True,
                                             window=_WINDOW, alpha=alpha)
    n_fft = basis.shape[1]
    basis *= lengths[:, np.newaxis] / float(n_fft)
    fft_basis = librosa.get_fftlib().fft(basis, n=n_fft, axis=1)[:, : (n_fft // 2) + 1]
    return librosa.util.sparsify_rows(fft_basis, quantile=_SPARSITY, dtype=np.complex64), n_fft


def _spectrum(y: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    # librosa.stft(y, window="ones", pad_mode="constant", dtype=complex64), to the bit, for the
    # short transforms of the CQT, where librosa's own bookkeeping costs more than the FFTs:
    # centred frames of the zero-padded signal, transformed in float64 (as librosa's float64
    # window makes them) by librosa's FFT library, rounded to complex64; (1 + n_fft // 2, n_frames)
    frames = centred_frames(y.astype(np.float64), n_fft, hop)
    return librosa.get_fftlib().rfft(frames, axis=-1).astype(np.complex64).T


def _stack(responses: list[np.ndarray]) -> np.ndarray:
    # librosa's __trim_stack: octaves bottom-up, each cut to the shortest octave's frames
    columns = min(r.shape[-1] for r in responses)
    out = np.empty((N_BINS, columns), dtype=np.complex64, order="F")
    end = N_BINS
    for response in responses:
        out[end - len(response) : end] = response[:, :columns]
        end -= len(response)
    return out

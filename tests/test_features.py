"""Feature extractors against references computed on known signals."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from agf.ingest.constantq import cqt_magnitude
from agf.ingest.features import (
    FEATURE_DIMS,
    FMA_COLUMNS,
    FMA_FEATURE_SIZES,
    Spectra,
    dmfcc_vector,
    estimate_tuning,
    spectral_rolloff,
    zero_crossing_rate,
    fma_features_reference,
    fma_matrices,
    fma_matrices_reference,
    fma_vector,
    mfcc_vector,
    statistics,
)

SR = 22050
LOGMEL = {"n_fft": 1024, "hop_length": 512, "n_mels": 128}


def a440(seconds: float = 5.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def column(name: str, stat: str, number: int = 1) -> int:
    return FMA_COLUMNS.index((name, stat, f"{number:02d}"))


def test_fma_has_518_columns_in_fmas_sorted_order():
    assert len(FMA_COLUMNS) == 518 == FEATURE_DIMS["fma"]
    assert FMA_COLUMNS == sorted(FMA_COLUMNS)
    assert FMA_COLUMNS[0] == ("chroma_cens", "kurtosis", "01") and FMA_COLUMNS[-1] == ("zcr", "std", "01")


def test_shared_transforms_give_the_same_518_features_as_one_transform_per_feature():
    rng = np.random.default_rng(0)
    y = a440() + 0.05 * rng.standard_normal(5 * SR).astype(np.float32)
    np.testing.assert_allclose(fma_vector(Spectra(y, SR)), fma_features_reference(y, SR), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:n_fft=.* is too large")  # the CQT's lowest octaves of a short clip, in both
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), noise=st.floats(0.001, 0.5), seconds=st.floats(1.0, 3.0),
       sr=st.sampled_from([SR, 44100, 48000]))  # the store's rate, and files' own (--fma-rate native)
def test_fmas_frame_matrices_are_its_features_pys_to_the_bit(seed, noise, seconds, sr):
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    tone = np.sin(2 * np.pi * rng.uniform(100, 2000) * np.arange(n) / sr) * rng.uniform(0.1, 1)
    y = (tone + noise * rng.standard_normal(n)).astype(np.float32)
    ours, theirs = fma_matrices(Spectra(y, sr)), fma_matrices_reference(y, sr)
    assert list(ours) == list(FMA_FEATURE_SIZES) and set(theirs) == set(ours)
    for name, matrix in ours.items():
        assert matrix.dtype == theirs[name].dtype, name
        np.testing.assert_array_equal(matrix, theirs[name], err_msg=name)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), sr=st.sampled_from([8000, 22050, 44100, 48000]), power=st.booleans(),
       frames=st.integers(1, 60))
def test_the_tuning_estimate_is_librosas_to_the_bit(seed, sr, power, frames):
    import librosa

    rng = np.random.default_rng(seed)
    tones = a440(2.0)[: sr // 2] * rng.uniform(0.1, 1) + rng.normal(0, rng.uniform(1e-4, 0.1), sr // 2).astype(np.float32)
    S = np.abs(librosa.stft(tones * np.float32(rng.uniform(0.5, 2)), n_fft=2048, hop_length=512))[:, :frames]
    S = S**2 if power else S
    assert estimate_tuning(S, sr=sr, bins_per_octave=12) == librosa.estimate_tuning(S=S, sr=sr, bins_per_octave=12)


@pytest.mark.filterwarnings("ignore:n_fft=2048 is too large")  # short clips are part of the input space
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), seconds=st.floats(0.05, 2.0), silence=st.floats(0, 0.9),
       sr=st.sampled_from([8000, 22050, 44100]))
def test_fmas_spectral_features_computed_faster_are_librosas_to_the_bit(seed, seconds, silence, sr):
    import librosa

    from agf.ingest.features import _centroid_and_bandwidth

    rng = np.random.default_rng(seed)
    y = (a440(2.0)[: int(seconds * SR)] + rng.normal(0, 0.1, int(seconds * SR))).astype(np.float32)
    y[: int(silence * len(y))] = 0.0  # digital silence: zeros, and samples within the threshold of zero
    y[rng.integers(0, len(y), 8)] = rng.choice([1e-11, -1e-11, -0.0], 8).astype(np.float32)
    S = np.abs(librosa.stft(y, n_fft=2048, hop_length=512))
    pairs = [(spectral_rolloff(S, sr=sr), librosa.feature.spectral_rolloff(S=S, sr=sr)),
             (zero_crossing_rate(y), librosa.feature.zero_crossing_rate(y, frame_length=2048, hop_length=512))]
    centroid, bandwidth = _centroid_and_bandwidth(S, sr)
    reference_centroid = librosa.feature.spectral_centroid(S=S, sr=sr)
    pairs += [(centroid, reference_centroid),
              (bandwidth, librosa.feature.spectral_bandwidth(S=S, sr=sr, centroid=reference_centroid))]
    for ours, theirs in pairs:
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs)


def test_an_a440_sine_reads_as_a440():
    features = fma_vector(Spectra(a440(), SR))
    chroma_means = [features[column("chroma_stft", "mean", i)] for i in range(1, 13)]
    cqt_means = [features[column("chroma_cqt", "mean", i)] for i in range(1, 13)]
    assert int(np.argmax(chroma_means)) == 9  # C=0 ... A=9
    assert int(np.argmax(cqt_means)) == 9  # wrong without bins_per_octave=12 on librosa 0.11
    assert features[column("spectral_centroid", "median")] == pytest.approx(440, rel=0.05)
    # a pure tone crosses zero 2 * 440 times a second
    assert features[column("zcr", "mean")] == pytest.approx(2 * 440 / SR, rel=0.02)
    assert features[column("rmse", "median")] > 0


def test_mfcc_and_dmfcc_have_the_documented_sizes_and_deltas_of_a_steady_tone_are_near_zero():
    spectra = Spectra(a440(), SR)
    mfcc = mfcc_vector(spectra, LOGMEL)
    dmfcc = dmfcc_vector(spectra, LOGMEL)
    assert mfcc.shape == (140,) and dmfcc.shape == (280,)
    medians = dmfcc[3 * 40 : 4 * 40]  # statistic order: kurtosis, max, mean, median, ...
    assert np.abs(medians).max() < 0.05
    assert np.abs(mfcc[3 * 20 : 4 * 20]).max() > 10  # while the MFCCs themselves are not


@pytest.mark.filterwarnings("ignore:Empty filters detected")  # 128 bands of a 512-point FFT at 16 kHz, as librosa warns
@settings(max_examples=30, deadline=None, derandomize=True)  # a bound on rounding: the same examples on every run
@given(seed=st.integers(0, 2**16), seconds=st.floats(0.2, 3.0), sr=st.sampled_from([16000, 22050, 44100]),
       n_fft=st.sampled_from([512, 1024, 2048]), hop=st.sampled_from([256, 512, 1024]), n_mels=st.sampled_from([40, 128]))
def test_the_log_mel_spectrogram_is_librosas_to_float_rounding(seed, seconds, sr, n_fft, hop, n_mels):
    import librosa

    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    y = (np.sin(2 * np.pi * rng.uniform(50, 4000) * np.arange(n) / sr) * rng.uniform(0.01, 1)
         + rng.normal(0, rng.uniform(1e-4, 0.3), n)).astype(np.float32)
    ours = Spectra(y, sr).log_mel(n_fft, hop, n_mels)
    theirs = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels))
    assert ours.shape == theirs.shape == (n_mels, 1 + n // hop) and ours.dtype == theirs.dtype
    # dB. A float32 transform (librosa's is float64) errs by ~1e-7 of the loudest bin, which near
    # the 80-dB floor came to at most 0.0046 dB over 300 random clips; storing frames as float16
    # rounds by 0.004 to 0.016 dB there.
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=0.01)


@pytest.mark.filterwarnings("ignore:n_fft=.* is too large")  # the lowest octaves of a short clip, as in librosa
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), seconds=st.floats(0.5, 3.0), sr=st.sampled_from([11025, 22050, 44100, 48000]),
       tuning=st.integers(-50, 49))
def test_the_constant_q_transform_is_librosas_to_the_bit(seed, seconds, sr, tuning):
    import librosa

    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    y = (np.sin(2 * np.pi * rng.uniform(30, 4000) * np.arange(n) / sr) + rng.normal(0, 0.1, n)).astype(np.float32)
    tuning = tuning / 100  # estimate_tuning's steps
    expected = np.abs(librosa.cqt(y, sr=sr, hop_length=512, bins_per_octave=12, n_bins=84, tuning=tuning))
    for _ in range(2):  # built, then from the kept filters
        np.testing.assert_array_equal(cqt_magnitude(y, sr=sr, tuning=tuning), expected)


def test_a_rate_too_low_for_seven_octaves_is_an_error_as_in_librosa():
    with pytest.raises(ValueError, match="needs a sampling rate above"):
        cqt_magnitude(a440(1.0), sr=8000, tuning=0.0)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 4), frames=st.integers(2, 50), seed=st.integers(0, 2**16))
def test_statistics_are_fmas_seven_per_row(rows, frames, seed):
    x = np.random.default_rng(seed).normal(size=(rows, frames))
    out = statistics(x).reshape(7, rows)
    expected = [stats.kurtosis(x, axis=1), x.max(1), x.mean(1), np.median(x, 1), x.min(1), stats.skew(x, axis=1), x.std(1)]
    np.testing.assert_allclose(out, np.nan_to_num(np.array(expected)), rtol=1e-4, atol=1e-4)


def test_essentia_descriptors_when_the_extra_is_installed(tmp_path):
    pytest.importorskip("essentia")
    import soundfile as sf

    from agf.ingest.pipeline import ExtractConfig, extract
    from agf.store.store import DEFAULT_CONFIG

    t = np.arange(int(8.0 * 44100)) / 44100
    sf.write(tmp_path / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100)
    sf.write(tmp_path / "chirp.wav", (0.3 * np.sin(2 * np.pi * (200 + 100 * t) * t)).astype(np.float32), 44100)
    config = ExtractConfig(22050, 5.0, DEFAULT_CONFIG["frames"], ("essentia",))
    a = extract(tmp_path / "tone.wav", config)["vectors"]["essentia"]
    b = extract(tmp_path / "chirp.wav", config)["vectors"]["essentia"]
    assert a.shape == b.shape and a.shape[0] > 500 and np.all(np.isfinite(a))
    assert not np.allclose(a, b)

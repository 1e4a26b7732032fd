"""Libraries in formats libsndfile cannot read, M4A (AAC or ALAC in MP4), WMA, WavPack and
Matroska audio, decoded by ffmpeg's command line; without ffmpeg, each is an error row that
says so."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from agf.ingest import collect, ingest
from agf.ingest.audio import AudioError, decode_clip
from agf.ingest.metadata import read_folder
from agf.store import Store

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(not FFMPEG or not shutil.which("ffprobe"),
                                  reason="these files are decoded and encoded by ffmpeg (apt-get install ffmpeg)")
RATE = 44100
#: File names by codec: the lossless ones give back their samples, the lossy ones the same every time.
LOSSLESS = {"alac": "song.m4a", "wavpack": "song.wv", "flac": "song.mka"}
LOSSY = {"aac": "song.m4a", "wmav2": "song.wma", "libopus": "song.webm"}


def _encode(samples: np.ndarray, path, codec: str, *extra: str) -> None:
    """(n, 2) int16 samples -> a file of ``codec`` in the container ``path``'s name says."""
    subprocess.run([FFMPEG, "-v", "error", "-f", "s16le", "-ar", str(RATE), "-ac", "2", "-i", "pipe:0", "-c:a", codec,
                    *extra, str(path)], input=samples.astype("<i2").tobytes(), check=True)


def _stereo(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-12000, 12000, (int(seconds * RATE), 2), dtype=np.int16)


def _mono(samples: np.ndarray) -> np.ndarray:
    """As agf mixes a decoded clip down: the mean of its channels, in float32."""
    return (samples.astype(np.float32) / 32768) @ np.full(2, 0.5, np.float32)


@needs_ffmpeg
@pytest.mark.parametrize("codec", LOSSLESS)
def test_a_lossless_file_s_middle_is_its_own_samples_to_the_last_bit(tmp_path, codec):
    samples = _stereo(12.0)
    _encode(samples, tmp_path / LOSSLESS[codec], codec)
    clip, rate, seconds = decode_clip(tmp_path / LOSSLESS[codec], 10.0)
    middle = (len(samples) - 10 * RATE) // 2
    # Matroska's clock ticks in milliseconds: ffmpeg's seek there lands within one of the middle
    slack = RATE // 1000 if LOSSLESS[codec].endswith(".mka") else 0
    starts = [s for s in range(middle - slack, middle + slack + 1) if np.array_equal(clip[:64], _mono(samples[s : s + 64]))]
    assert (rate, seconds, len(starts)) == (RATE, 12.0, 1)
    np.testing.assert_array_equal(clip, _mono(samples[starts[0] : starts[0] + 10 * RATE]))


@needs_ffmpeg
@pytest.mark.parametrize("codec", LOSSY)
def test_a_lossy_file_gives_its_middle_the_same_every_time(tmp_path, codec):
    _encode(_stereo(12.0), tmp_path / LOSSY[codec], codec)
    notes = []
    clip, rate, seconds = decode_clip(tmp_path / LOSSY[codec], 10.0, notes=notes)
    native = 48000 if codec == "libopus" else RATE  # Opus always decodes at 48 kHz
    assert (len(clip), rate, seconds, notes) == (10 * native, native, pytest.approx(12.0, abs=0.1), [])
    np.testing.assert_array_equal(clip, decode_clip(tmp_path / LOSSY[codec], 10.0)[0])


@needs_ffmpeg
def test_an_m4a_download_cut_short_gives_the_middle_of_what_it_holds(tmp_path):
    samples = _stereo(40.0, seed=1)
    whole, cut = tmp_path / "whole.m4a", tmp_path / "cut.m4a"
    _encode(samples, whole, "alac", "-movflags", "+faststart")  # the sample tables first, as streamed files have them
    cut.write_bytes(whole.read_bytes()[: int(0.4 * whole.stat().st_size)])
    notes = []
    clip, rate, held_s = decode_clip(cut, 10.0, notes=notes)
    assert 10 < held_s < 20 and notes == [f"the file holds {held_s:.1f} s of audio where its header says 40.0 s: cut short?"]
    start = (round(held_s * RATE) - 10 * RATE) // 2
    np.testing.assert_array_equal(clip, _mono(samples[start : start + 10 * RATE]))


@needs_ffmpeg
def test_a_folder_in_every_format_is_ingested_and_a_broken_file_is_an_error_row(tmp_path):
    (tmp_path / "music").mkdir()
    for seed, (codec, name) in enumerate([*LOSSLESS.items(), *LOSSY.items()]):
        _encode(_stereo(6.0, seed), tmp_path / "music" / f"{codec}-{name}", codec)
    whole = (tmp_path / "music" / "alac-song.m4a").read_bytes()
    (tmp_path / "music" / "broken.m4a").write_bytes(whole[:24] + bytes(4000))  # an MP4's first box, then nothing
    store = Store.open(tmp_path / "s", create=True)
    summary = ingest(store, collect(tmp_path / "music")[0], features=("mfcc",), workers=1, quiet=True)
    assert (summary.ingested, summary.failed) == (len(LOSSLESS) + len(LOSSY), 1)
    error = store.query("SELECT path, error FROM ingest_errors").to_pylist()[0]
    assert error["path"].endswith("broken.m4a") and error["error"].startswith("cannot decode audio: ffmpeg: ")


@needs_ffmpeg
@pytest.mark.parametrize("codec, name", [("aac", "song.m4a"), ("wmav2", "song.wma"), ("wavpack", "song.wv")])
def test_a_file_s_own_tags_name_its_artist_title_album_and_genre(tmp_path, codec, name):
    facts = {"artist": "Ludwig Ø", "title": "Für Elise", "album": "Bagatelles", "genre": "Classical"}
    _encode(_stereo(2.0), tmp_path / name, codec, *[a for k, v in facts.items() for a in ("-metadata", f"{k}={v}")])
    [candidate] = read_folder(tmp_path)
    assert (candidate.artist, candidate.title, candidate.album, candidate.genre_top) == tuple(facts.values())


@needs_ffmpeg
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="looks for processes in Linux's /proc")
def test_a_file_past_its_time_is_an_error_row_and_leaves_no_ffmpeg_running(tmp_path, cli):
    (tmp_path / "music").mkdir()
    _encode(_stereo(40.0), tmp_path / "music" / "slow.m4a", "alac")  # about 0.2 s to probe and decode
    out = cli("ingest", tmp_path / "music", "--file-timeout", "0.01", "--quiet", "--store", tmp_path / "s")
    assert out.exit_code == 0
    with Store.open(tmp_path / "s") as store:
        assert store.query("SELECT error FROM ingest_errors")["error"].to_pylist() == [
            "took longer than 0.01 s (--file-timeout): skipped"]
    assert [] == [cmdline for cmdline in map(_cmdline, Path("/proc").glob("[0-9]*")) if str(tmp_path).encode() in cmdline]


def _cmdline(process: Path) -> bytes:
    try:
        return (process / "cmdline").read_bytes()
    except OSError:  # it ended meanwhile
        return b""


@needs_ffmpeg
def test_a_playlist_named_m4a_is_refused_not_followed(tmp_path):
    """An HLS playlist makes ffmpeg read what it lists, URLs or files. agf hands ffmpeg only
    files that begin as an MP4 (or WMA, WavPack, Matroska) does, to be read by that format's
    demuxer alone, from the file protocol alone."""
    target = tmp_path / "private.m4a"
    _encode(_stereo(3.0), target, "alac")
    playlist = (f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:3.0,\nfile:{target}\n#EXT-X-ENDLIST\n").encode()
    (tmp_path / "list.m4a").write_bytes(playlist)
    (tmp_path / "boxed.m4a").write_bytes(b"\x00\x00\x00\x0cftypM4A " + playlist)  # sniffed as MP4, read as MP4 only
    for name in ("list.m4a", "boxed.m4a"):
        with pytest.raises(AudioError, match="cannot decode audio"):
            decode_clip(tmp_path / name, 10.0)


@needs_ffmpeg
def test_a_stream_wider_than_7_1_is_refused_before_it_is_decoded(tmp_path):
    """A lossless file of silence is tiny whatever its width: 16 channels at 384 kHz, 30 s, would
    decode to 737 MB."""
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=96000:cl=hexadecagonal", "-t", "3",
                    "-c:a", "wavpack", str(tmp_path / "wide.wv")], check=True)
    assert (tmp_path / "wide.wv").stat().st_size < 100_000
    with pytest.raises(AudioError, match=r"an audio stream of 1\d channels at 96000 Hz is not one agf reads"):
        decode_clip(tmp_path / "wide.wv", 30.0)


def test_without_ffmpeg_such_a_file_is_an_error_row_that_names_it(tmp_path, monkeypatch):
    (tmp_path / "song.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A \x00\x00\x02\x00isomM4A " + bytes(100))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(AudioError, match=r"an MP4 \(M4A\) file needs ffmpeg.*install ffmpeg"):
        decode_clip(tmp_path / "song.m4a", 10.0)

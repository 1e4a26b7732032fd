"""Libraries in formats libsndfile cannot read, M4A (AAC or ALAC in MP4), WMA, WavPack, Matroska
audio, raw AAC (ADTS) and Musepack, decoded by ffmpeg's command line; without ffmpeg, each is an
error row that says so."""

import contextlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agf.ingest import collect, ingest
from agf.ingest.audio import AudioError, decode_clip, decoder_messages, ffmpeg_demuxer
from agf.ingest.metadata import read_folder
from agf.store import Store

FFMPEG, MPCENC = shutil.which("ffmpeg"), shutil.which("mpcenc")
needs_ffmpeg = pytest.mark.skipif(not FFMPEG or not shutil.which("ffprobe"),
                                  reason="these files are decoded and encoded by ffmpeg (apt-get install ffmpeg)")
RATE = 44100
#: Codecs by file name: the lossless ones give back their samples, the lossy ones the same every time.
LOSSLESS = {"song.m4a": "alac", "song.wv": "wavpack", "song.mka": "flac"}
LOSSY = {"song.m4a": "aac", "song.wma": "wmav2", "song.webm": "libopus", "song.aac": "aac", "song.mpc": "musepack"}
#: The encoder of Musepack files, which ffmpeg decodes but cannot write.
needs_mpcenc = pytest.mark.skipif(not MPCENC, reason="Musepack files are encoded by mpcenc (apt-get install musepack-tools)")


def _names(codecs: dict[str, str]) -> list:
    """The file names of ``codecs``, for parametrize: Musepack's skipped without its encoder."""
    return [pytest.param(name, marks=needs_mpcenc) if codec == "musepack" else name for name, codec in codecs.items()]


def _encode(samples: np.ndarray, path, codec: str, *extra: str, tags: dict[str, str] | None = None) -> None:
    """(n, 2) int16 samples -> a file of ``codec`` in the container ``path``'s name says, with ``tags``."""
    tags = tags or {}
    if codec == "musepack":
        wav = Path(path).with_suffix(".wav")
        _encode(samples, wav, "pcm_s16le")
        subprocess.run([MPCENC, "--silent", *[a for k, v in tags.items() for a in (f"--{k}", v)], str(wav), str(path)],
                       check=True)
        wav.unlink()
        return
    # an ADTS stream keeps its tags in an ID3v2 tag before it, as taggers write them
    id3 = ["-write_id3v2", "1"] if str(path).endswith(".aac") else []
    subprocess.run([FFMPEG, "-v", "error", "-f", "s16le", "-ar", str(RATE), "-ac", "2", "-i", "pipe:0", "-c:a", codec,
                    *[a for k, v in tags.items() for a in ("-metadata", f"{k}={v}")], *id3, *extra, str(path)],
                   input=samples.astype("<i2").tobytes(), check=True)


def _stereo(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-12000, 12000, (int(seconds * RATE), 2), dtype=np.int16)


def _mono(samples: np.ndarray) -> np.ndarray:
    """As agf mixes a decoded clip down: the mean of its channels, in float32."""
    return (samples.astype(np.float32) / 32768) @ np.full(2, 0.5, np.float32)


def _decoded_by_ffmpeg(path: Path, demuxer: str) -> np.ndarray:
    """Everything ffmpeg decodes ``path`` (stereo) to, mixed down as agf mixes it."""
    whole = subprocess.run([FFMPEG, "-v", "quiet", "-f", demuxer, "-i", f"file:{path}", "-map", "0:a:0", "-f", "f32le",
                            "-c:a", "pcm_f32le", "pipe:1"], capture_output=True).stdout
    return np.frombuffer(whole, "<f4").reshape(-1, 2) @ np.full(2, 0.5, np.float32)


def _ten_seconds_of_the_middle(frames: np.ndarray) -> np.ndarray:
    start = (len(frames) - 10 * RATE) // 2
    return frames[start : start + 10 * RATE]


def _damage(path: Path, seed: int) -> None:
    """30 runs of 64 zeroed bytes in the middle half of ``path``."""
    data = bytearray(path.read_bytes())
    for at in np.random.default_rng(seed).integers(len(data) // 4, 3 * len(data) // 4, 30):
        data[at : at + 64] = bytes(64)
    path.write_bytes(bytes(data))


def _damaged_flac(path: Path) -> int:
    """A 30 s FLAC damaged where libsndfile stops; the frames libsndfile decodes of it."""
    sf.write(path, _stereo(30.0, seed=5).astype(np.float32) / 32768, RATE)
    _damage(path, seed=1)
    frames = 0
    with sf.SoundFile(path) as fh, contextlib.suppress(sf.LibsndfileError):
        for block in fh.blocks(65536):
            frames += len(block)
    return frames


@needs_ffmpeg
@pytest.mark.parametrize("name", LOSSLESS)
def test_a_lossless_file_s_middle_is_its_own_samples_to_the_last_bit(tmp_path, name):
    samples = _stereo(12.0)
    _encode(samples, tmp_path / name, LOSSLESS[name])
    clip, rate, seconds = decode_clip(tmp_path / name, 10.0)
    middle = (len(samples) - 10 * RATE) // 2
    # Matroska's clock ticks in milliseconds: ffmpeg's seek there lands within one of the middle
    slack = RATE // 1000 if name.endswith(".mka") else 0
    starts = [s for s in range(middle - slack, middle + slack + 1) if np.array_equal(clip[:64], _mono(samples[s : s + 64]))]
    assert (rate, seconds, len(starts)) == (RATE, 12.0, 1)
    np.testing.assert_array_equal(clip, _mono(samples[starts[0] : starts[0] + 10 * RATE]))


@needs_ffmpeg
@pytest.mark.parametrize("name", _names(LOSSY))
def test_a_lossy_file_gives_its_middle_the_same_every_time(tmp_path, name):
    _encode(_stereo(12.0), tmp_path / name, LOSSY[name])
    notes = []
    clip, rate, seconds = decode_clip(tmp_path / name, 10.0, notes=notes)
    native = 48000 if name.endswith(".webm") else RATE  # Opus always decodes at 48 kHz
    assert (len(clip), rate, seconds, notes) == (10 * native, native, pytest.approx(12.0, abs=0.1), [])
    np.testing.assert_array_equal(clip, decode_clip(tmp_path / name, 10.0)[0])


@needs_ffmpeg
@pytest.mark.parametrize("name", _names({"song.aac": "aac", "song.mpc": "musepack"}))
def test_a_stream_that_does_not_say_its_length_gives_its_exact_middle(tmp_path, name):
    """Raw AAC states no length and Musepack's ffprobe guesses it from the bit rate (5 % out on
    a 30 s clip); ffmpeg's seeks in them miss by up to thousands of samples. Such a file is
    counted through, and its middle is the middle of everything it decodes to, to the sample."""
    _encode(_stereo(14.0, seed=3), tmp_path / name, LOSSY[name])
    frames = _decoded_by_ffmpeg(tmp_path / name, {"song.aac": "aac", "song.mpc": "mpc8"}[name])
    clip, rate, seconds = decode_clip(tmp_path / name, 10.0)
    assert (rate, seconds) == (RATE, len(frames) / RATE)
    np.testing.assert_array_equal(clip, _ten_seconds_of_the_middle(frames))


@needs_ffmpeg
def test_an_m4a_download_cut_short_gives_the_middle_of_what_it_holds(tmp_path):
    samples = _stereo(40.0, seed=1)
    whole, cut = tmp_path / "whole.m4a", tmp_path / "cut.m4a"
    _encode(samples, whole, "alac", "-movflags", "+faststart")  # the sample tables first, as streamed files have them
    cut.write_bytes(whole.read_bytes()[: int(0.4 * whole.stat().st_size)])
    notes = []
    clip, rate, held_s = decode_clip(cut, 10.0, notes=notes)
    assert 10 < held_s < 20 and notes == [f"the file decodes to {held_s:.1f} s of audio where its header says 40.0 s: cut short, or damaged?"]
    start = (round(held_s * RATE) - 10 * RATE) // 2
    np.testing.assert_array_equal(clip, _mono(samples[start : start + 10 * RATE]))


@needs_ffmpeg
@pytest.mark.parametrize("name, demuxer", [("song.m4a", "mov"), ("song.aac", "aac")])
def test_a_damaged_aac_file_gives_the_middle_of_what_decodes_and_says_what_it_met(tmp_path, name, demuxer):
    """A damaged AAC frame decodes to nothing, so the file's time and its samples part: seeking by
    time then came up short twice and the file was lost as "file holds no audio samples"."""
    _encode(_stereo(20.0, seed=4), tmp_path / name, "aac")
    _damage(tmp_path / name, seed=0)
    with decoder_messages() as messages:
        clip, rate, seconds = decode_clip(tmp_path / name, 10.0)
    frames = _decoded_by_ffmpeg(tmp_path / name, demuxer)
    assert 10 < seconds < 20 and seconds == len(frames) / RATE and messages
    np.testing.assert_array_equal(clip, _ten_seconds_of_the_middle(frames))


@needs_ffmpeg
def test_a_damaged_flac_is_read_past_its_damage(tmp_path):
    """libsndfile stops at a FLAC's first damaged frame (and an MP3's, for some damage): 30 runs
    of zeroed bytes left 7 s of 30. ffmpeg decodes past them, and its reading is taken where it
    holds a second more."""
    libsndfile = _damaged_flac(tmp_path / "song.flac")
    with decoder_messages() as messages:
        clip, rate, seconds = decode_clip(tmp_path / "song.flac", 10.0)
    frames = _decoded_by_ffmpeg(tmp_path / "song.flac", "flac")
    assert libsndfile / RATE < 10 and 25 < seconds == len(frames) / RATE and messages
    np.testing.assert_array_equal(clip, _ten_seconds_of_the_middle(frames))


def test_without_ffmpeg_a_damaged_flac_keeps_what_libsndfile_decodes(tmp_path, monkeypatch):
    libsndfile = _damaged_flac(tmp_path / "song.flac")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    notes = []
    clip, rate, seconds = decode_clip(tmp_path / "song.flac", 10.0, notes=notes)
    assert (len(clip), seconds) == (libsndfile, libsndfile / RATE) and notes == [
        f"the file decodes to {seconds:.1f} s of audio where its header says 30.0 s: cut short, or damaged?"]


@needs_ffmpeg
def test_a_folder_in_every_format_is_ingested_and_a_broken_file_is_an_error_row(tmp_path):
    (tmp_path / "music").mkdir()
    formats = [(codec, name) for codecs in (LOSSLESS, LOSSY) for name, codec in codecs.items()
               if codec != "musepack" or MPCENC]
    for seed, (codec, name) in enumerate(formats):
        _encode(_stereo(6.0, seed), tmp_path / "music" / f"{codec}-{name}", codec)
    whole = (tmp_path / "music" / "alac-song.m4a").read_bytes()
    (tmp_path / "music" / "broken.m4a").write_bytes(whole[:24] + bytes(4000))  # an MP4's first box, then nothing
    store = Store.open(tmp_path / "s", create=True)
    summary = ingest(store, collect(tmp_path / "music")[0], features=("mfcc",), workers=1, quiet=True)
    assert (summary.ingested, summary.failed) == (len(formats), 1)
    error = store.query("SELECT path, error FROM ingest_errors").to_pylist()[0]
    assert error["path"].endswith("broken.m4a") and error["error"].startswith("cannot decode audio: ffmpeg: ")


@needs_ffmpeg
@pytest.mark.parametrize("name", _names(TAGGED := {"song.m4a": "aac", "song.wma": "wmav2", "song.wv": "wavpack",
                                                    "song.aac": "aac", "song.mpc": "musepack"}))
def test_a_file_s_own_tags_name_its_artist_title_album_and_genre(tmp_path, name):
    facts = {"artist": "Ludwig Ø", "title": "Für Elise", "album": "Bagatelles", "genre": "Classical"}
    _encode(_stereo(2.0), tmp_path / name, TAGGED[name], tags=facts)
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
    with pytest.raises(AudioError, match=r"MP4 \(M4A\) files need ffmpeg.*install ffmpeg"):
        decode_clip(tmp_path / "song.m4a", 10.0)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tag=st.binary(max_size=64), size=st.integers(0, 0x7F7F7F7F), flags=st.integers(0, 255), after=st.binary(max_size=8))
def test_what_follows_an_id3_tag_decides_a_file_s_decoder(tmp_path, tag, size, flags, after):
    """An ID3v2 tag of any size, true or not, before anything: ADTS frames after it go to ffmpeg's
    AAC demuxer; an MP3's frames, or nothing, to libsndfile."""
    syncsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    header = b"ID3\x04\x00" + bytes([flags]) + syncsafe
    path = tmp_path / "song.mp3"
    path.write_bytes(header + tag + after)
    at = 10 + sum(b << (7 * (3 - i)) for i, b in enumerate(syncsafe)) + 10 * bool(flags & 0x10)
    following = (header + tag + after)[at:at + 2]
    adts = len(following) == 2 and following[0] == 0xFF and following[1] & 0xF6 == 0xF0
    assert ffmpeg_demuxer(path) == ("aac" if adts else None)


@pytest.mark.parametrize("frame, demuxer", [(b"\xff\xf1\x50\x80", "aac"), (b"\xff\xf9\x50\x80", "aac"),  # MPEG-4, MPEG-2 AAC
                                            (b"\xff\xfb\x90\x64", None), (b"\xff\xf3\x90\x64", None),  # MP3 layer 3
                                            (b"\xff\xfd\x90\x64", None), (b"MPCK", "mpc8")])  # MP2 layer 2, Musepack
def test_a_file_s_first_frame_names_its_decoder_with_or_without_an_id3_tag(tmp_path, frame, demuxer):
    (tmp_path / "bare").write_bytes(frame + bytes(16))
    (tmp_path / "tagged").write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x05" + b"TIT2\x00" + frame + bytes(16))
    assert ffmpeg_demuxer(tmp_path / "bare") == demuxer
    assert ffmpeg_demuxer(tmp_path / "tagged") == (demuxer if demuxer == "aac" else None)

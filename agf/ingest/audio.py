"""Decoding: any supported file to one mono float32 clip at the store's sample rate.

libsndfile decodes MP3, Ogg (Vorbis, Opus), FLAC, WAV and AIFF; what it cannot read, M4A (AAC or
ALAC in MP4), WMA, WavPack, Matroska or WebM audio, raw AAC (ADTS) and Musepack, is decoded by
ffmpeg's command line where one is installed.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from agf.store.paths import open_regular

#: Extensions a folder scan picks up (a manifest may name any file; undecodable ones are errors),
#: each with the content type ``agf serve`` sends it as. Not the system's table: it varies by
#: machine (Python's own has no .flac, .m4a or .ogg) and Debian's gives ``.wv`` to WAP forms and
#: ``.mpc`` to a chemistry program's input files.
AUDIO_TYPES = {
    # libsndfile's
    ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".oga": "audio/ogg", ".opus": "audio/ogg", ".flac": "audio/flac",
    ".wav": "audio/wav", ".aif": "audio/aiff", ".aiff": "audio/aiff",
    # ffmpeg's
    ".m4a": "audio/mp4", ".wma": "audio/x-ms-wma", ".wv": "audio/x-wavpack", ".mka": "audio/x-matroska",
    ".webm": "audio/webm", ".aac": "audio/aac", ".mpc": "audio/x-musepack",
}
AUDIO_EXTENSIONS = set(AUDIO_TYPES)
#: Extensions of audio formats agf does not read, which a folder scan counts and names rather than
#: pass over in silence.
UNREAD_EXTENSIONS = {".ape", ".tta", ".shn", ".dsf", ".dff", ".mid", ".midi", ".m4p", ".ac3", ".dts", ".amr", ".ra"}
#: A clip whose peak stays below this (about -80 dBFS) is treated as silence.
SILENCE_PEAK = 1e-4


class AudioError(Exception):
    """A file that cannot be turned into a usable clip; ``stage`` says where it failed."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


MIN_SECONDS = 0.5  # shorter clips have too few frames for any feature to mean anything


@contextlib.contextmanager
def decoder_messages(enabled: bool = True):
    """Collect what C libraries write to file descriptor 2 while the block runs: libmpg123
    reports damaged frames there, past Python. Yields a list, filled with the lines at exit.

    Redirecting descriptor 2 affects the whole process, so only a worker process, whose
    stderr nothing else draws on, should enable it (a progress bar would vanish into it).
    """
    messages: list[str] = []
    if not enabled:
        yield messages
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            # each line once: a file read in several passes (see _middle) repeats a decoder's complaint
            lines = (line.strip() for line in sink.read().decode("utf-8", "replace").splitlines())
            messages.extend(line for line in dict.fromkeys(lines) if line)


def load_clip(path: Path, sample_rate: int, max_seconds: float) -> tuple[np.ndarray, int, float]:
    """Decode the middle ``max_seconds`` of ``path``, mixed to mono and resampled once.

    Parameters
    ----------
    path : Path
        An audio file libsndfile decodes (MP3, OGG/Vorbis, Opus, FLAC, WAV, AIFF).
    sample_rate : int
        Target rate in Hz.
    max_seconds : float
        Longest clip kept, in seconds, taken from the middle of the file (as FMA's clips are).

    Returns
    -------
    y : np.ndarray, shape (n_samples,), float32
        The clip at ``sample_rate``.
    native_rate : int
        The file's own sample rate in Hz.
    duration_s : float
        The whole file's duration in seconds.
    """
    y, native_rate, duration = decode_clip(path, max_seconds)
    return resample(y, native_rate, sample_rate), native_rate, duration


def decode_clip(path: Path, max_seconds: float, *, notes: list[str] | None = None) -> tuple[np.ndarray, int, float]:
    """The middle ``max_seconds`` of ``path``, mixed to mono at the file's own rate.

    Returns ``(y, native_rate, duration_s)``: y of shape (n_samples,) float32 at ``native_rate``
    Hz, and the duration in seconds of the audio the file holds. A file that ends before its
    header says (a download cut short) gives the middle of what it holds, and a line saying so
    is appended to ``notes`` when a second or more is missing. Raises :class:`AudioError`.
    """
    try:
        data, native_rate, total, promised = _middle(path, max_seconds)
    except sf.LibsndfileError as exc:
        raise AudioError("decode", f"cannot decode audio: {_libsndfile_error(exc, path)}") from None
    except (RuntimeError, ValueError, EOFError, OSError) as exc:
        raise AudioError("decode", f"cannot decode audio: {_clean(exc)}") from None
    # a lossy format's header may be out by its encoder's padding: a second or more missing is a cut
    if promised - total >= native_rate and notes is not None:
        notes.append(f"the file decodes to {total / native_rate:.1f} s of audio where its header says "
                     f"{promised / native_rate:.1f} s: cut short, or damaged?")
    if data.size == 0:
        raise AudioError("decode", "file holds no audio samples")
    if len(data) < MIN_SECONDS * native_rate:
        raise AudioError("decode", f"audio is too short: {len(data) / native_rate:.3g} s, at least {MIN_SECONDS} s needed")
    # A matrix product mixes down ~6x faster than data.mean(axis=1), whose rows are 1-2 values.
    y = data @ np.full(data.shape[1], 1 / data.shape[1], np.float32)
    # a NaN or an infinity shows in the extremes, which also give the peak: no clip-sized temporaries
    lowest, highest = float(y.min()), float(y.max())
    if not (np.isfinite(lowest) and np.isfinite(highest)):
        raise AudioError("decode", "audio holds non-finite samples")
    if max(highest, -lowest) < SILENCE_PEAK:
        raise AudioError("decode", "audio is silent (peak below -80 dBFS)")
    return y, native_rate, total / native_rate


#: The widest and fastest stream decoded: 7.1 surround at 384 kHz. A compressed file of silence
#: is tiny whatever its width (Ogg and Opus allow 255 channels), and a clip of a wider one could
#: fill the memory as it is decoded.
MAX_CHANNELS, MAX_RATE = 8, 384_000


def _readable_stream(rate: int, channels: int) -> tuple[int, int]:
    """``(rate, channels)`` of a stream agf decodes; ValueError for any other."""
    if not (0 < rate <= MAX_RATE and 0 < channels <= MAX_CHANNELS):
        raise ValueError(f"an audio stream of {channels} channels at {rate} Hz is not one agf reads")
    return rate, channels


#: Frames decoded at a time while a file is counted through (see :func:`_middle`).
_BLOCK = 1 << 16


def _middle(path: Path, max_seconds: float) -> tuple[np.ndarray, int, int, int]:
    """The middle ``max_seconds`` of ``path``: its frames (n, channels) float32, its rate in Hz,
    the number of frames it holds and the number its header promises. Decoded by ffmpeg when its
    first bytes name a format libsndfile cannot read (:func:`ffmpeg_demuxer`), else by libsndfile.

    These two numbers differ when the file ends before its header says (a download cut short),
    or where libsndfile stops at a damaged frame. Its middle by the header can then lie past what
    decodes (no samples, or a failed seek), so the file is decoded from the start to count the
    frames it holds, up to its first undecodable block (in blocks, in bounded memory), and the
    middle of those is read: ffmpeg's, where it decodes past the damage (:func:`_past_damage`).
    """
    demuxer = ffmpeg_demuxer(path)
    source = _FfmpegFile(path, demuxer) if demuxer else _SoundFile(os.fsencode(path))  # bytes: any name opens
    promised, longest = source.promised, int(round(max_seconds * source.rate))
    data = source.middle(promised, longest)
    if data is not None:
        return data, source.rate, promised, promised
    total = source.readable_frames()
    if isinstance(source, _SoundFile) and total <= promised - source.rate:  # a second or more short
        source, total = _past_damage(path, source, total)
    data = source.middle(total, longest)
    return (np.zeros((0, 1), np.float32) if data is None else data), source.rate, total, promised


#: ffmpeg's demuxer for each format libsndfile stops in at the first damaged frame (its decoding
#: of the file ends there, or fails on every read after it), by libsndfile's name for the format.
_RESYNCED = {"FLAC": "flac", "MP3": "mp3"}


def _past_damage(path: Path, source: "_SoundFile", total: int) -> tuple["_SoundFile | _FfmpegFile", int]:
    """``(source, total)``, or ffmpeg's reading of the file and the frames it decodes where that is
    a second or more longer: ffmpeg decodes past a damaged frame (to nothing, and on), where a
    download cut short ends for both. Without ffmpeg, libsndfile's reading stands.
    """
    if source.format not in _RESYNCED:
        return source, total
    try:
        other = _FfmpegFile(path, _RESYNCED[source.format])
        counted = other.readable_frames()
    except (RuntimeError, ValueError, OSError):  # no ffmpeg, or it cannot read it either: libsndfile's reading stands
        return source, total
    return (other, counted) if other.rate == source.rate and counted >= total + source.rate else (source, total)


#: What a file of each format ffmpeg decodes is called, by ffmpeg's demuxer for it.
_NAMES = {"mov": "MP4 (M4A)", "asf": "ASF (WMA)", "wv": "WavPack", "matroska": "Matroska (MKA, WebM)",
          "aac": "raw AAC (ADTS)", "mpc8": "Musepack", "flac": "FLAC", "mp3": "MP3"}
#: Demuxers whose streams say nowhere how long they are (ffprobe guesses from the bit rate, 5 % out
#: on a 30 s clip) and in which ffmpeg's seeks do not land on the sample asked for: such a file is
#: counted through and its middle read from its start.
_UNTIMED = {"aac", "mpc8"}
#: How an ASF file (WMA) begins: its header object's GUID.
_ASF_HEADER = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")


def ffmpeg_demuxer(path: Path) -> str | None:
    """ffmpeg's demuxer for ``path`` if it begins as a file libsndfile cannot read does (MP4,
    ASF, WavPack, Matroska, Musepack SV8, or an ADTS AAC stream after an optional ID3v2 tag),
    whatever its name; else None."""
    try:
        with open_regular(Path(path)) as fh:
            head = fh.read(16)
            if head[:3] == b"ID3" and len(head) >= 10:  # an ID3v2 tag: what follows it says the format
                fh.seek(_id3_size(head))
                return "aac" if _is_adts(fh.read(2)) else None
    except OSError:
        return None  # libsndfile then says what is wrong with it
    if head[4:8] == b"ftyp":
        return "mov"
    if head == _ASF_HEADER:
        return "asf"
    if head[:4] == b"wvpk":
        return "wv"
    if head[:4] == b"\x1aE\xdf\xa3":  # EBML: Matroska, WebM
        return "matroska"
    if head[:4] == b"MPCK":
        return "mpc8"
    return "aac" if _is_adts(head[:2]) else None


def _id3_size(header: bytes) -> int:
    """Bytes an ID3v2 tag takes from its 10-byte header: the header, its syncsafe size, a footer."""
    size = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(header[6:10]))
    return size + 10 * bool(header[5] & 0x10)


def _is_adts(two: bytes) -> bool:
    """Whether ``two`` bytes begin an ADTS frame: 12 bits of sync, then layer 0 (MPEG audio, MP3's
    frames, has layers 1 to 3 there)."""
    return len(two) == 2 and two[0] == 0xFF and two[1] & 0xF6 == 0xF0


class _SoundFile:
    """A file libsndfile decodes, opened afresh for each pass: a failed seek or read leaves a
    decoder unusable."""

    def __init__(self, name: bytes):
        self.name = name
        with sf.SoundFile(name) as fh:
            self.rate, _ = _readable_stream(fh.samplerate, fh.channels)
            self.promised, self.format = fh.frames, fh.format

    def middle(self, frames: int, longest: int) -> np.ndarray | None:
        """The middle ``longest`` of the first ``frames`` frames, (n, channels) float32, or None
        where the file ends before them (a seek past its end fails in FLAC, reads nothing in MP3)."""
        keep = min(frames, longest)
        with sf.SoundFile(self.name) as fh:
            try:
                fh.seek((frames - keep) // 2)
                data = fh.read(keep, dtype="float32", always_2d=True)
            except sf.LibsndfileError:
                return None
        return data if len(data) == keep else None

    def readable_frames(self) -> int:
        """Frames the file yields from its start to its end or its first undecodable block."""
        total = 0
        with sf.SoundFile(self.name) as fh, contextlib.suppress(sf.LibsndfileError):  # "flac decoder lost sync"
            while len(block := fh.read(_BLOCK, dtype="float32", always_2d=True)):
                total += len(block)
        return total


class _FfmpegFile:
    """A file's first audio stream, decoded by ffmpeg's command line.

    Hostile files are kept to what they are: ffmpeg reads each with the one demuxer its first
    bytes name (never a playlist or concatenation format, which open other files or URLs) and
    the file protocol only, from an absolute ``file:`` path (a name is never read as a URL or an
    option). What ffmpeg says goes to file descriptor 2, where :func:`decoder_messages`
    collects decoders' complaints.
    """

    #: Options of ffmpeg and ffprobe before their input and its demuxer: quiet but for errors, files only.
    INPUT = ["-hide_banner", "-v", "error", "-protocol_whitelist", "file"]
    #: ffmpeg's output: the first audio stream's samples, interleaved float32, to its standard output.
    OUTPUT = ["-map", "0:a:0", "-f", "f32le", "-c:a", "pcm_f32le", "pipe:1"]

    def __init__(self, path: Path, demuxer: str):
        self.ffmpeg, ffprobe = shutil.which("ffmpeg"), shutil.which("ffprobe")
        if not (self.ffmpeg and ffprobe):
            raise RuntimeError(f"{_NAMES[demuxer]} files need ffmpeg, which libsndfile is not: install ffmpeg "
                               "(apt-get install ffmpeg, brew install ffmpeg)")
        self.url = "file:" + os.fsdecode(os.path.abspath(path))
        self.input = [*self.INPUT, "-f", demuxer]
        probe = self._run([ffprobe, *self.input, "-select_streams", "a:0", "-show_entries",
                           "stream=sample_rate,channels,duration:format=duration", "-of", "json", self.url])
        facts = json.loads(probe or b"{}")
        stream = (facts.get("streams") or [{}])[0]
        if "sample_rate" not in stream:
            raise ValueError(f"the {_NAMES[demuxer]} file holds no audio stream")
        self.rate, self.channels = _readable_stream(int(stream["sample_rate"]), int(stream.get("channels", 0)))
        self.seeks = True  # until it is counted through (see middle)
        duration = stream.get("duration") or facts.get("format", {}).get("duration") or "0"
        seconds = 0.0 if demuxer in _UNTIMED else float(duration)
        if not 0 <= seconds < 1e7:  # NaN too
            raise ValueError(f"an audio stream of {seconds} s is not one agf reads")
        # a file that does not say how long it is (a stream written live), or only guesses, is counted through
        self.promised = int(round(seconds * self.rate)) or self.readable_frames()

    def middle(self, frames: int, longest: int) -> np.ndarray | None:
        """As :meth:`_SoundFile.middle`: ffmpeg seeks to the first frame wanted (decoding from the
        packet before it, and dropping what precedes that frame) and stops after the last.

        A file counted through (every file of :data:`_UNTIMED`, in which ffmpeg's seeks miss; and
        any other whose length is what ffmpeg decoded: a damaged frame decodes to nothing, so time
        and samples part) is decoded from its start instead; the samples before the middle are dropped as
        they come, and ffmpeg is stopped once the middle is read.
        """
        keep = min(frames, longest)
        start = (frames - keep) // 2
        frame = 4 * self.channels
        if self.seeks:
            pcm = self._run([self.ffmpeg, "-nostdin", *self.input, "-ss", f"{start / self.rate:.6f}", "-i", self.url,
                             "-t", f"{(keep + self.rate // 10) / self.rate:.6f}", *self.OUTPUT])
        else:
            pcm, skip = bytearray(), start * frame
            for block in self._blocks([self.ffmpeg, "-nostdin", *self.input, "-i", self.url, *self.OUTPUT],
                                      complaints=True):
                dropped = min(skip, len(block))
                pcm += block[dropped:]
                skip -= dropped
                if len(pcm) >= keep * frame:
                    break
        whole = min(len(pcm), keep * frame) // frame * frame  # whole frames only, however ffmpeg stopped
        data = np.frombuffer(bytes(pcm[:whole]), "<f4").reshape(-1, self.channels)
        return data if len(data) == keep else None

    def readable_frames(self) -> int:
        """Frames ffmpeg decodes from the stream's start to its end; from now on the middle is
        read from the start (see :meth:`middle`)."""
        command = [self.ffmpeg, "-nostdin", *self.input, "-i", self.url, *self.OUTPUT]
        self.seeks = False
        return sum(map(len, self._blocks(command))) // (4 * self.channels)

    @staticmethod
    def _blocks(command: list[str], *, complaints: bool = False):
        """What ``command`` writes to its standard output, in blocks of up to 1 MiB; its
        complaints go to descriptor 2 with ``complaints``, else nowhere (counting through, they
        would be said twice)."""
        errors = None if complaints else subprocess.DEVNULL
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors) as process:
            try:
                while block := process.stdout.read(1 << 20):
                    yield block
            finally:
                process.kill()  # a reader with all it needs stops here: ffmpeg need not decode the rest

    def _run(self, command: list[str]) -> bytes:
        """What ``command`` writes to its standard output; its complaints to descriptor 2."""
        done = subprocess.run(command, capture_output=True)
        if done.stderr:
            os.write(2, done.stderr)
        if done.returncode != 0:
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            reason = lines[-1].removeprefix(f"{self.url}: ") if lines else f"exit status {done.returncode}"
            raise RuntimeError(f"ffmpeg: {reason}")  # the file is named by the row that holds this
        return done.stdout


def _libsndfile_error(exc: sf.LibsndfileError, path: Path) -> str:
    """libsndfile's reason, without soundfile's "Error opening b'path'" (the row names the file)."""
    reason = getattr(exc, "error_string", "") or _clean(exc)
    if reason.startswith("File does not exist") and Path(path).is_file():
        # what libsndfile says of a .mp3 (or other) file that holds no stream it can decode
        return "no audio stream libsndfile can decode (not audio, or damaged)"
    return reason.rstrip(".")


def resample(y: np.ndarray, native_rate: int, sample_rate: int) -> np.ndarray:
    """``y`` (n_samples,) from ``native_rate`` to ``sample_rate`` Hz (soxr, high quality), float32."""
    if native_rate == sample_rate:
        return y
    import soxr

    return soxr.resample(y, native_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)


def _clean(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__

"""The demo corpus: deterministic synthetic music where genre and artist are audible.

Genre decides tempo, drum pattern, instrument waveform and note length; each artist has its own
key, scale, harmonic timbre, brightness and vibrato, so both are learnable from the audio.
Files are FLAC at 22,050 Hz with a manifest CSV that ``agf ingest --manifest`` reads.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 22050
SCALES = {
    "major": [0, 2, 4, 5, 7, 9, 11],
    "minor": [0, 2, 3, 5, 7, 8, 10],
    "pentatonic": [0, 2, 4, 7, 9],
    "dorian": [0, 2, 3, 5, 7, 9, 10],
    "blues": [0, 3, 5, 6, 7, 10],
}


@dataclass(frozen=True)
class GenreStyle:
    name: str
    bpm: tuple[float, float]
    kick: str  # 16 steps, x = hit
    snare: str
    hat: str
    wave: str  # sine, saw, square, triangle, fm
    note_steps: tuple[int, ...]  # note lengths in 16th-note steps
    drive: float  # soft-clip amount
    subgenres: tuple[str, ...]


GENRES = (
    GenreStyle("Rock", (110, 140), "x.......x.x.....", "....x.......x...", "x.x.x.x.x.x.x.x.", "saw", (2, 4), 3.0, ("Garage", "Punk", "Metal")),
    GenreStyle("Electronic", (120, 130), "x...x...x...x...", "....x.......x...", "..x...x...x...x.", "square", (1, 2), 1.2, ("Techno", "House", "Chiptune")),
    GenreStyle("Hip-Hop", (80, 95), "x......x..x.....", "....x.......x...", "x.x.x.x.x.x.x.x.", "sine", (2, 3), 1.5, ("Boom-Bap", "Trap", "Lo-Fi")),
    GenreStyle("Classical", (60, 90), "................", "................", "................", "triangle", (4, 8), 1.0, ("Baroque", "Romantic", "Chamber")),
    GenreStyle("Jazz", (130, 180), "x.........x.....", "......x.......x.", "x..xx..xx..xx..x", "fm", (1, 3), 1.0, ("Swing", "Bebop", "Cool")),
    GenreStyle("Folk", (90, 115), "x.......x.......", "................", "....x.......x...", "triangle", (2, 4), 1.0, ("Acoustic", "Celtic", "Americana")),
    GenreStyle("Pop", (100, 124), "x...x...x...x...", "....x.......x...", "x.x.x.x.x.x.x.x.", "saw", (2, 2, 4), 1.3, ("Synth-Pop", "Indie-Pop", "Dance-Pop")),
    GenreStyle("Experimental", (50, 170), "x..x...x..x..x..", ".x.....x...x....", "x.xxx..x.x.xx...", "fm", (1, 5), 2.0, ("Noise", "Drone", "Glitch")),
)


@dataclass(frozen=True)
class ArtistVoice:
    name: str
    root_midi: int
    scale: str
    rolloff: float  # harmonic amplitude ratio, 0..1 (low = dull, high = bright)
    vibrato: float  # depth in semitones
    attack: float  # seconds
    tempo_shift: float  # multiplies the genre's tempo
    noise: float  # breathiness
    tags: tuple[str, ...]


def _artist(genre: GenreStyle, index: int, rng: np.random.Generator) -> ArtistVoice:
    return ArtistVoice(
        name=f"{genre.name} Artist {index + 1}",
        root_midi=int(rng.integers(45, 62)),
        scale=str(rng.choice(list(SCALES))),
        rolloff=float(rng.uniform(0.15, 0.85)),
        vibrato=float(rng.uniform(0.0, 0.5)),
        attack=float(rng.uniform(0.002, 0.08)),
        tempo_shift=float(rng.uniform(0.93, 1.07)),
        noise=float(rng.uniform(0.0, 0.08)),
        tags=tuple(rng.choice(genre.subgenres, size=int(rng.integers(1, 3)), replace=False).tolist()),
    )


def _tone(freq: float, n: int, wave: str, voice: ArtistVoice, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    vib = 2 ** (voice.vibrato / 12 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(freq * vib) / SR
    if wave == "fm":
        signal = np.sin(phase + (1 + 4 * voice.rolloff) * np.sin(2 * phase))
    else:
        signal = np.zeros(n)
        for k in range(1, 9):
            if k * freq > SR / 2.2:
                break
            if wave == "sine" and k > 2:
                break
            if wave in ("square", "triangle") and k % 2 == 0:
                continue
            amp = voice.rolloff ** (k - 1) / (k**2 if wave == "triangle" else 1)
            signal += amp * np.sin(k * phase)
    attack = max(1, int(voice.attack * SR))
    envelope = np.minimum(1.0, np.arange(n) / attack) * np.exp(-3.0 * t / max(t[-1], 1e-3))
    return envelope * (signal + voice.noise * rng.standard_normal(n))


def _drums(style: GenreStyle, step: int, n_steps: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(step * (n_steps + 16) + SR)
    t = np.arange(int(0.25 * SR)) / SR
    kick = np.sin(2 * np.pi * (50 + 90 * np.exp(-t * 30)) * t) * np.exp(-t * 14)
    snare = rng.standard_normal(len(t)) * np.exp(-t * 22) * 0.6
    hat = np.diff(rng.standard_normal(len(t) // 4 + 1)) * np.exp(-t[: len(t) // 4] * 80) * 0.25
    for i in range(n_steps):
        for pattern, sound in ((style.kick, kick), (style.snare, snare), (style.hat, hat)):
            if pattern[i % 16] == "x":
                out[i * step : i * step + len(sound)] += sound
    return out


def _hz(midi: int) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


def render_track(style: GenreStyle, voice: ArtistVoice, seed: list[int], seconds: float) -> np.ndarray:
    """One track: a melody in the artist's key and timbre over the genre's groove, float32 mono."""
    rng = np.random.default_rng(seed)
    bpm = rng.uniform(*style.bpm) * voice.tempo_shift
    step = int(SR * 60 / bpm / 4)  # a 16th note
    n = int(seconds * SR)
    n_steps = n // step + 1
    out = 0.5 * _drums(style, step, n_steps, rng)
    scale = SCALES[voice.scale]
    degree, i = 0, 0
    while i < n_steps:
        length = int(rng.choice(style.note_steps))
        degree = int(np.clip(degree + rng.integers(-2, 3), -7, 10))
        midi = voice.root_midi + 12 * (degree // len(scale)) + scale[degree % len(scale)]
        start, size = i * step, length * step
        out[start : start + size] += 0.4 * _tone(_hz(midi + 12), size, style.wave, voice, rng)
        if i % 16 == 0:  # a bass note on each bar's root
            out[start : start + 16 * step] += 0.3 * _tone(_hz(voice.root_midi - 12), 16 * step, "sine", voice, rng)
        i += length
    out = np.tanh(style.drive * out[:n]) / np.tanh(style.drive)
    return (0.8 * out / max(np.max(np.abs(out)), 1e-6)).astype(np.float32)


def write_corpus(folder: Path, genres: int = 8, artists: int = 8, tracks: int = 5, seconds: float = 30.0, seed: int = 0) -> Path:
    """Write the demo corpus under ``folder`` and return its manifest CSV's path.

    Deterministic for a given seed; files already written with the same name are kept.
    """
    folder = Path(folder)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for g, style in enumerate(GENRES[:genres]):
        for a in range(artists):
            voice = _artist(style, a, np.random.default_rng([seed, g, a]))
            artist_id = f"{style.name.lower()}-{a + 1}"
            for t in range(tracks):
                rel = Path("audio") / artist_id / f"track{t + 1}.flac"
                path = folder / rel
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    audio = render_track(style, voice, seed=[seed, g, a, t], seconds=seconds)
                    tmp = path.with_suffix(".tmp.flac")
                    sf.write(tmp, audio, SR, subtype="PCM_16")
                    tmp.rename(path)
                rows.append(
                    {
                        "path": str(rel),
                        "track_id": f"demo:{artist_id}:{t + 1}",
                        "title": f"{voice.name} – Piece {t + 1}",
                        "artist": voice.name,
                        "artist_id": artist_id,
                        "album": f"{voice.name} – Album",
                        "genre": style.name,
                        "tags": "|".join(voice.tags),
                    }
                )
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest

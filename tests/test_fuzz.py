"""Fuzzed input: whatever the bytes, paths, tags or manifest, ingest records a track or an error row,
or the CLI says one line — never a traceback, a hang, or a damaged store."""

import csv
import io
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agf.cli import app
from agf.ingest import collect, ingest
from agf.store import SCHEMAS, Store
from typer.testing import CliRunner


# Derandomized: CI sees the same 30 examples each run; bench/soak.py explores further.
FUZZ = settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
SUFFIXES = [".mp3", ".ogg", ".opus", ".flac", ".wav", ".aiff", ".xyz", ""]


def _real(fmt: str) -> bytes:
    """A real two-second file of ``fmt`` (written by libsndfile) to truncate and corrupt."""
    buffer = io.BytesIO()
    t = np.arange(2 * 22050) / 22050
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * 440 * t), 22050, format=fmt.upper())
    return buffer.getvalue()


REAL = {fmt: _real(fmt) for fmt in ("mp3", "flac", "wav", "ogg")}


def _wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


damaged_real = st.tuples(st.sampled_from(sorted(REAL)), st.floats(0, 1), st.lists(st.integers(0, 4095), max_size=8)).map(
    lambda t: _damage(REAL[t[0]], t[1], t[2]))
odd_samples = st.tuples(st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e30]), st.integers(1, 30_000),
                        st.sampled_from([1, 8, 100, 8000, 22050, 96000, 384000])).map(
    lambda t: _wav(np.where(np.arange(t[1]) % 3 == 0, t[0], 0.1).astype(np.float32), t[2]))
audio_bytes = st.one_of(st.binary(max_size=4096), damaged_real, odd_samples, st.just(b""))


def _damage(data: bytes, keep: float, flips: list[int]) -> bytes:
    out = bytearray(data[: int(len(data) * keep)])
    for position in flips:
        if position < len(out):
            out[position] ^= 0xA5
    return bytes(out)


@FUZZ
@given(data=audio_bytes, suffix=st.sampled_from(SUFFIXES),
       name=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=120))
def test_any_bytes_under_any_name_become_a_track_or_an_error_row(data, suffix, name):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        path = folder / (name[:100] + suffix)
        try:
            path.write_bytes(data)
        except OSError:
            return  # a name this file system refuses is not ours to test
        with Store.open(Path(tmp) / "store", create=True) as store:
            summary = ingest(store, collect(folder)[0] if suffix in SUFFIXES[:6] else [_candidate(path)],
                             features=("mfcc",), workers=1, quiet=True)
            assert summary.ingested + summary.failed == 1
            errors = store.query("SELECT stage, error FROM ingest_errors").to_pylist()
            warnings = [e for e in errors if e["stage"] == "decode warning"]  # ingested, with what the decoder met
            assert (len(errors) - len(warnings), len(warnings)) == (summary.failed, summary.warned)
            assert all(e["error"] and "\n" not in e["error"] for e in errors)
            assert {name: store.count(name) for name in ("tracks", "features_mfcc")} == {
                "tracks": summary.ingested, "features_mfcc": summary.ingested}
            for table in SCHEMAS:
                store.sql(f"SELECT count(*) FROM {table}")
            vectors = store.query("SELECT vector FROM features_mfcc")["vector"].to_pylist()
            assert all(np.isfinite(v).all() for v in vectors)


def _candidate(path: Path):
    from agf.ingest.metadata import read_files

    return read_files([path])[0]


MANIFEST_COLUMNS = ["path", "artist", "album", "title", "genre", "tags", "track_id", "artist_id", "split", "junk", ""]
cell = st.one_of(st.text(max_size=300), st.sampled_from(["clip.flac", "missing.mp3", "../clip.flac", "/dev/null", "0", "-1"]))


@FUZZ
@given(columns=st.lists(st.sampled_from(MANIFEST_COLUMNS), min_size=1, max_size=7),
       rows=st.lists(st.lists(cell, max_size=9), max_size=5),
       encoding=st.sampled_from(["utf-8", "latin-1", "utf-16", "garbage"]))
def test_any_manifest_ingests_or_is_refused_in_one_line(columns, rows, encoding):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "clip.flac").write_bytes(REAL["flac"])
        text = io.StringIO()
        csv.writer(text).writerows([columns, *rows])
        manifest = root / "manifest.csv"
        if encoding == "garbage":
            manifest.write_bytes(text.getvalue().encode("utf-8", "surrogatepass") + bytes(range(128, 256)))
        else:
            manifest.write_bytes(text.getvalue().encode(encoding, "replace"))
        result = CliRunner().invoke(app, ["ingest", str(root), "--manifest", str(manifest), "--features", "mfcc",
                                          "--workers", "1", "--store", str(root / "store"), "--quiet", "--json"])
        assert result.exit_code in (0, 1), result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        if result.exit_code == 1:
            assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1
        if (root / "store" / "store.json").exists():
            with Store.open(root / "store") as store:
                for table in SCHEMAS:
                    store.sql(f"SELECT count(*) FROM {table}")
                assert store.count("tracks") <= 1  # one real file, however often it is named

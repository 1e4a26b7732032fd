"""Trust: kills at random points, readers beside a writer, a full disk, hostile SQL, tampered files.

Every writing command is killed (SIGKILL, its whole process group) at random moments, several
times over; after each kill the store opens and every table reads, and the final store equals
the one an uninterrupted run makes.
"""

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from agf.app.similar import Similar
from agf.store import Store
from agf.store.index import load_index
from killing import AGF, agf, every_table_reads, kill_at_random_points, timed


@pytest.fixture(scope="module")
def factored(small_store, tmp_path_factory) -> Path:
    """The small store with mfcc and tags factors: what an index is built from."""
    root = tmp_path_factory.mktemp("factored") / "store"
    shutil.copytree(small_store, root)
    agf("factors", "build", "--source", "mfcc,tags", "--clusters", "16", "--topics", "4", "--store", root, "--quiet")
    return root


def _copies(source: Path | None, tmp_path: Path) -> tuple[Path, Path]:
    """Two stores to compare: one for the uninterrupted run, one for the killed runs."""
    pair = (tmp_path / "reference", tmp_path / "killed")
    for root in pair:
        if source is not None:
            shutil.copytree(source, root)
    return pair


def test_ingest_killed_again_and_again_ends_as_an_uninterrupted_run(small_corpus, tmp_path):
    reference, killed = _copies(None, tmp_path)
    args = ["ingest", small_corpus.parent, "--manifest", small_corpus, "--features", "mfcc", "--workers", "1",
            "--part-size", "2", "--quiet", "--store"]
    seconds = timed(args + [reference])
    counts = kill_at_random_points(args + [killed], killed, seconds, seed=1)
    tracks = [c["tracks"] for c in counts if c]
    assert tracks == sorted(tracks) and all(c["features_mfcc"] == c["tracks"] for c in counts if c)
    agf(*args, killed)
    query = "SELECT t.source_id, a.name, t.audio_sha256, f.vector FROM tracks t JOIN artists a USING (artist_id) " \
            "JOIN features_mfcc f USING (track_id) ORDER BY t.source_id"
    expected, got = (Store.open(r).query(query).to_pylist() for r in (reference, killed))
    assert [r["source_id"] for r in got] == [r["source_id"] for r in expected] and len(got) == 27
    for a, b in zip(got, expected):
        assert a["name"] == b["name"] and a["audio_sha256"] == b["audio_sha256"]
        assert np.allclose(a["vector"], b["vector"], atol=1e-5)


def test_factors_build_killed_again_and_again_ends_as_an_uninterrupted_run(small_store, tmp_path):
    reference, killed = _copies(small_store, tmp_path)
    args = ["factors", "build", "--source", "mfcc,tags", "--clusters", "16", "--topics", "4", "--quiet", "--store"]
    seconds = timed(args + [reference])
    for counts in kill_at_random_points(args + [killed], killed, seconds, seed=int(os.environ.get("AGF_KILL_SEED", 2))):
        assert counts["agf"] in (0, 9, 9 + 9)  # a commit per source: none, mfcc, or mfcc and tags
    agf(*args, killed)
    query = "SELECT artist_id, source, model_id, factors FROM agf ORDER BY source, artist_id"
    expected, got = (Store.open(r).query(query).to_pylist() for r in (reference, killed))
    assert [(r["artist_id"], r["source"], r["model_id"]) for r in got] == [
        (r["artist_id"], r["source"], r["model_id"]) for r in expected]
    assert np.allclose([r["factors"] for r in got], [r["factors"] for r in expected], atol=1e-6)


def test_training_killed_again_and_again_ends_as_an_uninterrupted_run(small_store, tmp_path):
    reference, killed = _copies(small_store, tmp_path)
    args = ["train", "--target", "genre", "--epochs", "2", "--crops-per-track", "2", "--split", "random",
            "--quiet", "--store"]
    seconds = timed(args + [reference])
    for counts in kill_at_random_points(args + [killed], killed, seconds, seed=3):
        assert counts["models"] in (0, 1)
    agf(*args, killed)
    query = "SELECT model_id, sha256 FROM models"
    assert Store.open(killed).query(query).to_pylist() == Store.open(reference).query(query).to_pylist()


def test_index_build_killed_again_and_again_ends_as_an_uninterrupted_run(factored, tmp_path):
    reference, killed = _copies(factored, tmp_path)
    args = ["index", "build", "--quiet", "--store"]
    seconds = timed(args + [reference])
    kill_at_random_points(args + [killed], killed, seconds, seed=4)
    agf(*args, killed)
    built = sorted(p.name for p in (reference / "indexes").glob("*.faiss"))
    assert built and built == sorted(p.name for p in (killed / "indexes").glob("*.faiss"))
    for name in built:
        assert (killed / "indexes" / name).read_bytes() == (reference / "indexes" / name).read_bytes()
    assert not list(killed.rglob("*.tmp"))


def test_readers_beside_a_writer_never_see_half_a_commit(factored, game_music, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(factored, root)
    agf("index", "build", "--quiet", "--store", root)
    folder = tmp_path / "incoming"
    folder.mkdir()
    for clip in sorted(game_music.rglob("*.mp3"))[:12]:
        (folder / clip.name).symlink_to(clip)
    writer = subprocess.Popen(["bash", "-c", " && ".join(
        [" ".join(AGF + ["ingest", str(folder), "--part-size", "1", "--workers", "2", "--quiet", "--store", str(root)]),
         " ".join(AGF + ["factors", "build", "--source", "mfcc,tags", "--clusters", "16", "--topics", "4", "--quiet",
                         "--store", str(root)]),
         " ".join(AGF + ["index", "build", "--quiet", "--store", str(root)])])], stderr=subprocess.PIPE, text=True)
    answered, seen = 0, []
    store = Store.open(root)
    while writer.poll() is None or answered < 5:
        row = store.sql("SELECT (SELECT count(*) FROM tracks) AS tracks, (SELECT count(*) FROM features_mfcc) AS mfcc, "
                        "(SELECT count(*) FROM features_dmfcc) AS dmfcc, "
                        "(SELECT count(*) FROM tracks WHERE artist_id NOT IN (SELECT artist_id FROM artists)) AS orphans"
                        ).to_pylist()[0]
        assert row["tracks"] == row["mfcc"] == row["dmfcc"] and row["orphans"] == 0, row  # one commit, all or nothing
        seen.append(row["tracks"])
        index = load_index(store, "agf:mfcc", "artist")
        assert index.index.ntotal == index.meta["count"]
        assert len(Similar(store).artists({"artist_id": 1, "name": "first"}, k=3, space="agf:mfcc")) == 3
        answered += 1
    assert writer.returncode == 0, writer.stderr.read()
    assert seen == sorted(seen) and seen[0] >= 27 and seen[-1] == 27 + 12
    assert answered >= 5


def test_a_full_disk_is_a_clear_error_and_nothing_is_left_half_written(small_store, game_music, tmp_path):
    import resource

    root = tmp_path / "store"
    shutil.copytree(small_store, root)
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def small_disk():  # every file this process writes may hold 100 kB: a frame matrix does not fit
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    clips = sorted(game_music.rglob("*.mp3"))[:1]
    result = subprocess.run([*AGF, "ingest", str(clips[0].parent), "--workers", "1", "--store", str(root), "--quiet"],
                            capture_output=True, text=True, preexec_fn=small_disk)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: cannot write or read the store: ") and "disk full" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    after = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert [p for p in after if p not in before and not p.startswith("frames/")] == []
    assert not [p for p in after if p.endswith(".tmp")]
    assert every_table_reads(root)["tracks"] == 27
    agf("ingest", clips[0].parent, "--workers", "1", "--store", root, "--quiet")  # with room again, it goes on
    assert every_table_reads(root)["tracks"] > 27


def test_an_unwritable_store_is_a_clear_error_and_stays_as_it_was(small_store, game_music, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(small_store, root)
    folders = [str(root), *(str(p) for p in root.rglob("*") if p.is_dir())]
    # Immutable folders: nothing can be created in them, not even by root (who ignores permissions).
    if subprocess.run(["chattr", "+i", *folders], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this file system")
    try:
        clip = sorted(game_music.rglob("*.mp3"))[0]
        result = subprocess.run([*AGF, "ingest", str(clip.parent), "--workers", "1", "--store", str(root), "--quiet"],
                                capture_output=True, text=True)
    finally:
        subprocess.run(["chattr", "-i", *folders], check=True)
    assert result.returncode == 1 and result.stderr.startswith("Error: cannot write or read the store: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert every_table_reads(root)["tracks"] == 27 and not list(root.rglob("*.tmp"))


HOSTILE_SQL = [
    "INSERT INTO artists VALUES (99, 'x', 'x')",
    "UPDATE tracks SET title = 'x'",
    "DELETE FROM tracks",
    "DROP VIEW tracks",
    "CREATE TABLE t AS SELECT 1",
    "CREATE OR REPLACE VIEW tracks AS SELECT 1",
    "COPY tracks TO '{root}/tables/tracks/evil.parquet' (FORMAT parquet)",
    "COPY (SELECT 1) TO '{root}/evil.csv'",
    "EXPORT DATABASE '{root}/export'",
    "ATTACH '{root}/evil.duckdb' AS evil",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = false",
    "PRAGMA enable_profiling",
    "CALL pragma_version()",
    "CHECKPOINT",
    "SELECT 1; DROP VIEW tracks",
    "BEGIN TRANSACTION",
]


@pytest.mark.parametrize("statement", HOSTILE_SQL)
def test_sql_cannot_change_the_store(small_store, statement, cli):
    before = sorted(str(p) for p in small_store.rglob("*"))
    out = cli("sql", statement.format(root=small_store), "--store", small_store)
    assert out.exit_code == 1 and out.output.startswith("Error: ") and len(out.output.strip().splitlines()) == 1
    assert sorted(str(p) for p in small_store.rglob("*")) == before


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_tampered_model_and_index_files_are_refused(factored, tmp_path, damage, cli):
    root = tmp_path / "store"
    shutil.copytree(factored, root)
    assert cli("index", "build", "--store", root, "--quiet").exit_code == 0
    damaged = [*root.glob("models/*/model.npz"), root / "indexes" / "artist-agf_mfcc.faiss"]
    for path in damaged:
        data = bytearray(path.read_bytes())
        if damage == "truncate":
            del data[len(data) // 2 :]
        else:
            data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    out = cli("factors", "update", "--store", root)
    assert out.exit_code == 1 and "does not match its recorded sha256" in out.output
    out = cli("similar", "--id", "1", "--space", "agf:mfcc", "--store", root)
    errors = [line for line in out.output.splitlines() if line.startswith("Error: ")]
    assert out.exit_code == 1 and len(errors) == 1 and "does not match the sha256 in its sidecar" in errors[0]
    assert "Traceback" not in out.output


def test_an_older_store_says_what_to_run_and_migrates_in_place(small_store, tmp_path, cli):
    root = tmp_path / "store"
    shutil.copytree(small_store, root)
    meta = json.loads((root / "store.json").read_text())
    (root / "store.json").write_text(json.dumps({**meta, "format_version": 1}))
    (root / "commit.lock").unlink()  # what a version-1 store lacks
    out = cli("sql", "select count(*) as n from tracks", "--store", root)
    assert out.exit_code == 1 and out.output.strip() == (
        f"Error: store {root} has format version 1, older than this agf's (3): "
        f"run `agf migrate --store {root}` to upgrade it in place")
    migrated = json.loads(cli("migrate", "--store", root, "--json").stdout)
    assert migrated == {"path": str(root), "format_version_before": 1, "format_version": 3}
    assert (root / "commit.lock").exists()
    assert json.loads(cli("sql", "select count(*) as n from tracks", "--store", root, "--json").stdout) == [{"n": 27}]

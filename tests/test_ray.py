"""The Ray engine: ``ingest``, ``embed`` and ``tag`` on a local Ray cluster write what the local
engine writes (order aside, floats within tolerance)."""

import csv
import json
import shutil

import numpy as np
import pytest

from agf.store import Store
from killing import agf, kill_after_each_new_commit

ray = pytest.importorskip("ray", reason="the ray extra is not installed")


@pytest.fixture(scope="module")
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _features(root):
    with Store.open(root) as store:
        return {r["audio_sha256"]: r for r in store.query(
            "SELECT t.audio_sha256, t.source_id, t.duration_s, a.name AS artist, t.genre_top, m.vector AS mfcc, d.vector AS dmfcc "
            "FROM tracks t JOIN artists a USING (artist_id) JOIN features_mfcc m USING (track_id) "
            "JOIN features_dmfcc d USING (track_id)").to_pylist()}


def _embeddings(root):
    with Store.open(root) as store:
        return {(r["sha"], r["model_id"]): r["vector"] for r in store.query(
            "SELECT t.audio_sha256 AS sha, e.model_id, e.vector FROM embeddings e JOIN tracks t USING (track_id)").to_pylist()}


def test_ingest_on_ray_writes_what_the_local_engine_writes(local_cluster, game_music, tmp_path, cli):
    manifest = tmp_path / "manifest.csv"  # every third clip, with its manifest row
    with open(game_music / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "path": str(game_music / r["path"])} for r in rows[::3])
    stores = {engine: tmp_path / engine for engine in ("local", "ray")}
    for engine, root in stores.items():
        out = cli("ingest", game_music, "--manifest", manifest, "--engine", engine, "--store", root, "--quiet", "--json")
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout)["ingested"] == len(rows[::3]) == 43
    local, remote = (_features(root) for root in stores.values())
    assert local.keys() == remote.keys() and len(local) == 43
    for sha, row in local.items():
        other = remote[sha]
        assert {k: row[k] for k in ("source_id", "duration_s", "artist", "genre_top")} == {
            k: other[k] for k in ("source_id", "duration_s", "artist", "genre_top")}
        assert np.allclose(row["mfcc"], other["mfcc"], atol=1e-4) and np.allclose(row["dmfcc"], other["dmfcc"], atol=1e-4)


def test_embed_and_tag_on_ray_write_what_the_local_engine_writes(local_cluster, trained, game_music, tmp_path, cli):
    clips = sorted(game_music.rglob("*.mp3"))
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for clip in clips[:12:2]:
        (incoming / clip.name).symlink_to(clip)
    stores = {engine: tmp_path / engine for engine in ("local", "ray")}
    for engine, root in stores.items():
        shutil.copytree(trained["store"], root)
        for args in (["ingest", incoming], ["embed"], ["tag", *clips[1:12:2]]):
            out = cli(*args, "--engine", engine, "--store", root, "--quiet", "--json")
            assert out.exit_code == 0, (args[0], out.output)
    local, remote = (_embeddings(root) for root in stores.values())
    assert local.keys() == remote.keys() and len(local) == 2 * (45 + 12)
    assert all(np.allclose(local[k], remote[k], atol=1e-4) for k in local)
    local, remote = (_predictions(root) for root in stores.values())
    assert [k for k, _ in local] == [k for k, _ in remote] and len(local) == 3 * (9 + 6)
    assert np.allclose([p for _, p in local], [p for _, p in remote], atol=1e-4)


def _predictions(root):
    with Store.open(root) as store:
        rows = store.query("SELECT t.audio_sha256 AS sha, p.model_id, p.genre, p.probability FROM predictions p "
                           "JOIN tracks t USING (track_id) ORDER BY 1, 2, 3").to_pylist()
    return [((r["sha"], r["model_id"], r["genre"]), r["probability"]) for r in rows]


def test_an_unreachable_cluster_is_a_one_line_error(tmp_path, small_corpus):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "agf.cli", "ingest", str(small_corpus.parent), "--manifest",
                             str(small_corpus), "--engine", "ray", "--address", "127.0.0.1:1", "--store",
                             str(tmp_path / "s")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip() == (
        "Error: cannot reach the Ray cluster at 127.0.0.1:1: Connection refused")


def test_a_ray_driver_killed_mid_ingest_loses_nothing_and_the_next_run_completes(local_cluster, small_corpus, tmp_path):
    address = ray.get_runtime_context().gcs_address  # the killed drivers join this test's cluster
    args = ["ingest", small_corpus.parent, "--manifest", small_corpus, "--features", "mfcc", "--part-size", "2",
            "--engine", "ray", "--address", address, "--quiet", "--store"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    agf(*args, reference)
    tracks = [c["tracks"] for c in kill_after_each_new_commit([*args, killed], killed)]
    assert 0 < tracks[0] < tracks[1] < tracks[2] < 27  # each driver was killed mid-run, after committing more
    agf(*args, killed)
    query = "SELECT t.source_id, t.audio_sha256, f.vector FROM tracks t JOIN features_mfcc f USING (track_id) ORDER BY 1"
    expected, got = (Store.open(root).query(query).to_pylist() for root in (reference, killed))
    assert [(r["source_id"], r["audio_sha256"]) for r in got] == [(r["source_id"], r["audio_sha256"]) for r in expected]
    assert len(got) == 27 and np.allclose([r["vector"] for r in got], [r["vector"] for r in expected], atol=1e-5)

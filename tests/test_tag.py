"""``agf tag``: new music in, genre predictions out, equal to what evaluation scored."""

import csv
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from agf.ingest.synth import write_corpus
from agf.models.cnn import int8_available
from agf.models.data import assign_splits
from agf.models.train import all_tracks
from agf.models.transfer import TransferParams, train_transfer
from agf.store import Store

PREDICTION_COLUMNS = "track_id, model_id, genre, probability, rank"


@pytest.fixture
def store_copy(trained, tmp_path):
    shutil.copytree(trained["store"], tmp_path / "store")
    return tmp_path / "store"


def _predictions(store_dir, where="TRUE"):
    with Store.open(store_dir) as store:
        return store.query(f"SELECT {PREDICTION_COLUMNS} FROM predictions WHERE {where} ORDER BY track_id, rank").to_pylist()


def test_tagging_held_out_tracks_gives_the_predictions_evaluation_scored(trained, store_copy, cli):
    with Store.open(store_copy) as store:
        splits = assign_splits(all_tracks(store), "auto", seed=0)
        held_out = [r["path"] for r in store.query("SELECT track_id, path FROM tracks ORDER BY 1").to_pylist()
                    if splits[r["track_id"]] == "test"]
    evaluated = _predictions(store_copy)  # what `agf train --target transfer` wrote for the test split
    assert len(held_out) == 9 and len(evaluated) == 9 * 3  # 3 artists never trained on, 3 genres each
    out = cli("tag", *held_out, "--store", store_copy, "--json", "--quiet")
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert [r["path"] for r in rows] == held_out and all(r["error"] is None for r in rows)
    tagged = _predictions(store_copy)  # same tracks, same model: the same ranking and probabilities
    assert [(p["track_id"], p["genre"], p["rank"]) for p in tagged] == [(p["track_id"], p["genre"], p["rank"]) for p in evaluated]
    assert np.allclose([p["probability"] for p in tagged], [p["probability"] for p in evaluated], rtol=0, atol=1e-6)
    top = {p["track_id"]: p for p in evaluated if p["rank"] == 1}
    assert [(r["genre"], r["probability"]) for r in rows] == [
        (top[r["track_id"]]["genre"], round(top[r["track_id"]]["probability"], 4)) for r in rows]


def test_new_music_is_tagged_and_a_bad_file_is_reported(trained, store_copy, cli, tmp_path):
    new = write_corpus(tmp_path / "new", genres=2, artists=1, tracks=2, seconds=5.0, seed=9).parent / "audio"
    (new / "broken.mp3").write_bytes(b"ID3 not really an mp3")
    out = cli("tag", new, "--top", "2", "--chunk-size", "2", "--store", store_copy, "--json", "--quiet")
    assert out.exit_code == 0, out.output
    rows = {r["path"].split("audio/")[-1]: r for r in json.loads(out.stdout)}
    assert sorted(rows) == ["broken.mp3", "electronic-1/track1.flac", "electronic-1/track2.flac",
                            "rock-1/track1.flac", "rock-1/track2.flac"]
    assert rows["broken.mp3"]["track_id"] is None and rows["broken.mp3"]["error"]
    tagged = [r for r in rows.values() if r["error"] is None]
    assert all(len(r["top"].split(", ")) == 2 and 0 < r["probability"] <= 1 for r in tagged)
    counted = cli("sql", "select genre, count(*) as n from predictions where rank = 1 group by 1 order by 1",
                  "--store", store_copy, "--json")
    assert sum(r["n"] for r in json.loads(counted.stdout)) == 9 + 4  # the test split, then the new four
    with Store.open(store_copy) as store:
        assert store.count("ingest_errors") == 1
        assert store.query("SELECT count(*) AS n FROM embeddings").to_pylist()[0]["n"] == 2 * (45 + 4)
        assert store.query("SELECT count(*) AS n FROM predictions WHERE predicted_at IS NULL").to_pylist()[0]["n"] == 0
    again = cli("tag", new, "--store", store_copy, "--json", "--quiet")
    assert json.loads(again.stdout) == json.loads(cli("tag", new, "--store", store_copy, "--json", "--quiet").stdout)
    assert len(_predictions(store_copy)) == (9 + 4) * 3  # tagging again replaces, never duplicates


def test_a_newer_model_adds_its_rows_and_old_predictions_stay(trained, store_copy, cli):
    with Store.open(store_copy, write=True) as store:
        newer = train_transfer(store, TransferParams(epochs=5, seed=3), quiet=True)["model_id"]
    assert newer != trained["model_id"]
    track = (trained["corpus"] / "audio" / "rock-1" / "track1.flac")
    for model in (trained["model_id"], newer):
        assert cli("tag", track, "--model", model, "--store", store_copy, "--quiet").exit_code == 0
    with Store.open(store_copy) as store:
        (track_id,) = store.query("SELECT track_id FROM tracks WHERE path = ?", [str(track)])["track_id"].to_pylist()
    models = {p["model_id"] for p in _predictions(store_copy, f"track_id = {track_id}")}
    assert models == {trained["model_id"], newer}


def test_tag_says_what_to_run_first_and_refuses_unknown_models(trained, small_store, store_copy, cli, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(small_store, bare)
    out = cli("tag", trained["corpus"], "--store", bare)
    assert out.exit_code == 1 and out.output.strip() == (
        "Error: no genre classifier in the store: run `agf train --target all`, `agf embed`, "
        "`agf train --target transfer` first")
    out = cli("tag", trained["corpus"], "--model", "transfer-genre-000000000000", "--store", store_copy)
    assert out.exit_code == 1 and out.output.startswith("Error: cannot load transfer model transfer-genre-000000000000")
    assert len(out.output.strip().splitlines()) == 1


def test_game_music_clips_are_tagged_with_a_model_trained_elsewhere(trained, store_copy, game_music, cli):
    files = sorted(game_music.rglob("*.mp3"))[::16]
    out = cli("tag", *files, "--store", store_copy, "--json", "--quiet")
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert len(rows) == len(files) == 8 and all(r["error"] is None and r["genre"] for r in rows)
    assert len(_predictions(store_copy, f"track_id IN ({', '.join(str(r['track_id']) for r in rows)})")) == 8 * 3


def test_a_manifest_gives_tagged_files_their_artist_and_title(store_copy, cli, tmp_path):
    manifest = write_corpus(tmp_path / "uploads", genres=1, artists=1, tracks=2, seconds=5.0, seed=11)
    out = cli("tag", "--manifest", manifest, "--store", store_copy, "--json", "--quiet")
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert len(rows) == 2 and all(r["error"] is None for r in rows)
    with open(manifest, newline="") as fh:
        expected = sorted((r["artist"], r["title"]) for r in csv.DictReader(fh))
    with Store.open(store_copy) as store:
        stored = store.query("SELECT a.name, t.title FROM tracks t JOIN artists a USING (artist_id) "
                             "WHERE track_id IN (SELECT unnest(?::BIGINT[])) ORDER BY 1, 2",
                             [[r["track_id"] for r in rows]]).to_pylist()
    assert [(r["name"], r["title"]) for r in stored] == expected


@pytest.mark.parametrize("approximate", ["bf16", pytest.param("int8", marks=pytest.mark.skipif(
    not int8_available(), reason="no exact 8-bit convolutions on this CPU"))])
def test_bfloat16_and_8_bit_tagging_rank_genres_as_float32_does(trained, game_music, cli, tmp_path, approximate):
    files = sorted(game_music.rglob("*.mp3"))[3::32]
    tagged = {}
    for precision in ("fp32", approximate):
        store_dir = tmp_path / precision
        shutil.copytree(trained["store"], store_dir)
        out = cli("tag", *files, "--precision", precision, "--store", store_dir, "--json", "--quiet")
        assert out.exit_code == 0, out.output
        with Store.open(store_dir) as store:  # track ids follow the workers' finishing order: match by path
            vectors = store.query("SELECT vector FROM embeddings JOIN tracks USING (track_id) WHERE path IN "
                                  "(SELECT unnest(?::VARCHAR[])) ORDER BY model_id, path", [list(map(str, files))])
            ranked = store.query("SELECT genre, probability, rank FROM predictions JOIN tracks USING (track_id) "
                                 "WHERE path IN (SELECT unnest(?::VARCHAR[])) ORDER BY path, rank", [list(map(str, files))])
        tagged[precision] = np.asarray(vectors["vector"].to_pylist()), ranked.to_pylist()
    (exact, exact_rows), (fast, fast_rows) = tagged["fp32"], tagged[approximate]
    assert exact.shape == fast.shape == (2 * len(files), 256)  # two CNNs per track
    cosine = (exact * fast).sum(axis=1) / np.linalg.norm(exact, axis=1) / np.linalg.norm(fast, axis=1)
    assert cosine.min() > 0.999 and not np.array_equal(exact, fast)
    assert [r["genre"] for r in exact_rows if r["rank"] == 1] == [r["genre"] for r in fast_rows if r["rank"] == 1]
    moved = np.abs(np.subtract([r["probability"] for r in exact_rows], [r["probability"] for r in fast_rows]))
    print(f"{approximate}: cosine with float32 >= {cosine.min():.5f}, probabilities within {moved.max():.4f}")
    assert moved.max() < 0.02


def test_rows_stream_out_chunk_by_chunk_and_a_closed_pipe_stops_tagging_cleanly(store_copy, game_music):
    files = [str(f) for f in sorted(game_music.rglob("*.mp3"))[:8]]
    command = [sys.executable, "-m", "agf.cli", "tag", *files, "--chunk-size", "1", "--csv", "--quiet",
               "--store", str(store_copy)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    header, first = process.stdout.readline(), process.stdout.readline()  # `agf tag ... --csv | head -n 2`
    process.stdout.close()
    _, errors = process.communicate(timeout=300)
    assert header.startswith("path,track_id,genre,probability,top,error") and first.startswith(files[0])
    assert process.returncode == 1 and errors == ""  # no traceback: the reader left, so tagging stopped
    tagged = len(_predictions(store_copy, "track_id > 45"))  # the fixture's 45 tracks come first
    assert tagged % 3 == 0 and 3 <= tagged < 8 * 3  # every chunk written out was committed first


def test_streamed_json_and_csv_read_as_the_table_does(store_copy, game_music, cli):
    files = sorted(game_music.rglob("*.mp3"))[:3]
    rows = json.loads(cli("tag", *files, "--chunk-size", "2", "--store", store_copy, "--json", "--quiet").stdout)
    csv_rows = list(csv.DictReader(io.StringIO(cli("tag", *files, "--store", store_copy, "--csv", "--quiet").stdout)))
    table = cli("tag", *files, "--store", store_copy, "--quiet").stdout.splitlines()
    assert [r["path"] for r in rows] == [r["path"] for r in csv_rows] == list(map(str, files))
    assert [r["genre"] for r in rows] == [r["genre"] for r in csv_rows] == [line.split()[2] for line in table[2:]]

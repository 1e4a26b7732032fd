"""The Python API: `agf.open` answers what the CLI answers, and the README's example runs."""

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import agf
from agf.store import Store

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_example_runs(searchable_trained, tmp_path):
    demo = tmp_path / "demo"  # the example tags a file: into a copy
    shutil.copytree(searchable_trained, demo)
    code = re.search(r"## From Python\n\n```python\n(.*?)```", README.read_text(), re.DOTALL)[1]
    code = code.replace("~/.local/share/agf/demo", str(demo))
    tracks = Store.open(demo / "store").count("tracks")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    lines = printed.getvalue().splitlines()
    assert eval(lines[0])[0]["n"] > 0  # the genre counts
    assert f"({tracks}, 256)" in lines  # one embedding per track by the genre CNN
    assert lines[-1].startswith(str(demo / "corpus" / "new-music" / "newcomer.flac"))


@pytest.mark.parametrize("k", [1, 3])
def test_similar_gives_the_rows_of_the_cli(searchable_trained, cli, k):
    store = agf.open(searchable_trained / "store")
    name = store.sql("select name from artists order by artist_id desc limit 1")["name"][0].as_py()
    out = cli("similar", name, "-k", k, "--json", "--store", searchable_trained / "store")
    assert store.similar(name, k=k) == json.loads(out.stdout) and len(json.loads(out.stdout)) == k


def test_a_read_only_store_refuses_to_write_and_sql_stays_sandboxed(searchable_trained):
    store = agf.open(searchable_trained / "store")
    with pytest.raises(agf.AgfError, match="open it with agf.open\\(path, write=True\\)"):
        list(store.tag([searchable_trained / "corpus"]))
    with pytest.raises(agf.AgfError, match="read-only"):
        store.sql("copy tracks to '/tmp/agf-api-copy.csv'")
    assert not Path("/tmp/agf-api-copy.csv").exists()


def test_vectors_match_what_sql_reads(searchable_trained):
    store = agf.open(searchable_trained / "store")
    model = store.sql("select model_id from models where kind = 'cnn' order by model_id limit 1")["model_id"][0].as_py()
    ids, matrix = store.vectors("embeddings", "model_id = ?", [model])
    rows = store.sql(f"select track_id, vector from embeddings where model_id = '{model}' order by track_id").to_pylist()
    assert ids.tolist() == [r["track_id"] for r in rows]
    np.testing.assert_array_equal(matrix, np.asarray([r["vector"] for r in rows], np.float32))


def test_zero_neighbours_is_an_agf_error_for_artists_and_tracks(searchable_trained):
    store = agf.open(searchable_trained / "store")
    name = store.sql("select name from artists order by artist_id limit 1")["name"][0].as_py()
    for ask in (lambda: store.similar(name, k=0), lambda: store.similar_tracks(1, k=0)):
        with pytest.raises(agf.AgfError, match="k must be a positive number of neighbours, not 0"):
            ask()


def test_tag_writes_genres_in_your_words_a_playlist_and_undo_puts_the_tags_back(searchable_trained, game_music, tmp_path):
    import mutagen

    shutil.copytree(searchable_trained / "store", tmp_path / "store")
    (tmp_path / "music").mkdir()
    for clip in sorted((game_music / "clips").rglob("*.mp3"))[:2]:
        shutil.copy(clip, tmp_path / "music" / clip.name)
    tags = lambda path: dict(mutagen.File(path).tags or {})  # noqa: E731
    before = {path: tags(path) for path in (tmp_path / "music").iterdir()}
    with agf.open(tmp_path / "store", write=True) as store:
        with pytest.raises(agf.AgfError, match="dry_run=True goes with write_tags=True"):
            store.tag(tmp_path / "music", dry_run=True)
        for bad in ({"Rock": 5}, ["Rock"]):  # nothing is tagged, written or committed
            with pytest.raises(agf.AgfError, match="a genres map maps the model's genre names to your names"):
                store.tag(tmp_path / "music", write_tags=True, genres_map=bad)
        classes = json.loads(store.sql("select params from models where kind = 'transfer'")["params"][0].as_py())["classes"]
        rows = list(store.tag(tmp_path / "music", top=1, write_tags=True, min_probability=0,
                              genres_map={g: f"My {g}" for g in classes}, m3u=tmp_path / "by-genre.m3u"))
        for row in rows:
            assert mutagen.File(row["path"], easy=True)["genre"] == [f"My {row['genre']}"]
        playlist = (tmp_path / "by-genre.m3u").read_text(encoding="utf-8").splitlines()
        assert sorted(line for line in playlist if not line.startswith("#")) == sorted(map(str, before))
        undone = store.undo_tags(since="2000-01-01")
    assert [r["done"] for r in undone] == ["restored"] * 2
    assert {path: tags(path) for path in before} == before

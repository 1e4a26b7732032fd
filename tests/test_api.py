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

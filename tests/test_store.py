"""The store: atomic parts, views over every table, read-only SQL, format versions, compaction."""

import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agf.errors import AgfError
from agf.store import SCHEMAS, Store, fixed_vectors
from agf.store import parts as parts_module


def _artists(ids):
    return pa.table({"artist_id": pa.array(ids, pa.int64()), "source_id": [f"a{i}" for i in ids], "name": [f"Artist {i}" for i in ids]})


def _append(store, ids):
    with store.transaction() as tx:
        tx.append("artists", _artists(ids))


def _names(store):
    return store.query("SELECT artist_id FROM artists ORDER BY artist_id")["artist_id"].to_pylist()


def test_a_new_store_has_every_table_as_a_view(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    for name, schema in SCHEMAS.items():
        result = store.sql(f"SELECT * FROM {name}")
        assert result.num_rows == 0
        assert result.column_names == schema.names


def test_a_crash_before_the_commit_leaves_the_table_unchanged(tmp_path, monkeypatch):
    store = Store.open(tmp_path / "s", create=True)
    _append(store, [1, 2])

    def crash(*args, **kwargs):
        raise OSError("power cut")

    monkeypatch.setattr(parts_module.os, "replace", crash)
    with pytest.raises(OSError):
        with store.transaction() as tx:
            tx.append("artists", _artists([3]))
            tx.replace("genres", SCHEMAS["genres"].empty_table())
    monkeypatch.undo()
    assert _names(store) == [1, 2]
    store.close()
    reopened = Store.open(tmp_path / "s", write=True)
    assert _names(reopened) == [1, 2]
    assert not list((tmp_path / "s" / "tables").glob("*/.*.tmp"))


def test_a_crash_after_the_commit_point_is_finished_on_reopen(tmp_path, monkeypatch):
    store = Store.open(tmp_path / "s", create=True)
    _append(store, [1, 2])

    def crash(root, journal):
        raise KeyboardInterrupt  # killed after the journal was written, before the renames

    monkeypatch.setattr(parts_module, "_apply", crash)
    with pytest.raises(KeyboardInterrupt):
        with store.transaction() as tx:
            tx.replace("artists", _artists([7, 8, 9]))
    monkeypatch.undo()
    store.close()
    reopened = Store.open(tmp_path / "s", write=True)
    assert _names(reopened) == [7, 8, 9]


def test_sql_is_read_only(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    _append(store, [1])
    before = sorted(p.name for p in (tmp_path / "s").rglob("*"))
    for statement in [
        "INSERT INTO artists VALUES (2, 'b', 'B')",
        "CREATE TABLE t AS SELECT 1",
        f"COPY artists TO '{tmp_path}/s/tables/artists/x.parquet'",
        "DROP VIEW artists",
        "SELECT 1; DELETE FROM artists",
    ]:
        with pytest.raises(AgfError, match="read-only"):
            store.sql(statement)
    assert sorted(p.name for p in (tmp_path / "s").rglob("*")) == before
    assert store.sql("SELECT name FROM artists").to_pylist() == [{"name": "Artist 1"}]


def test_vectors_are_fixed_size_arrays_in_sql(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    vectors = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.float32)
    with store.transaction() as tx:
        tx.append("features_mfcc", pa.table({"track_id": pa.array([1, 2, 3], pa.int64()), "vector": fixed_vectors(vectors)}))
    rows = store.sql(
        "SELECT b.track_id, round(array_cosine_similarity(a.vector, b.vector)::DOUBLE, 4) AS s "
        "FROM features_mfcc a, features_mfcc b WHERE a.track_id = 1 ORDER BY s DESC, b.track_id"
    ).to_pylist()
    assert rows == [{"track_id": 1, "s": 1.0}, {"track_id": 3, "s": 0.7071}, {"track_id": 2, "s": 0.0}]
    assert store.sql("SELECT typeof(vector) AS t FROM features_mfcc LIMIT 1").to_pylist() == [{"t": "FLOAT[3]"}]


def test_a_store_from_a_newer_version_is_refused(tmp_path):
    Store.open(tmp_path / "s", create=True).close()
    meta_path = tmp_path / "s" / "store.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(AgfError, match="format version 99, newer"):
        Store.open(tmp_path / "s")


def test_a_second_writer_is_refused(tmp_path):
    first = Store.open(tmp_path / "s", create=True)
    with pytest.raises(AgfError, match="another agf process"):
        Store.open(tmp_path / "s", write=True)
    first.close()
    Store.open(tmp_path / "s", write=True).close()


def test_delete_where_binds_its_parameters_and_rewrites_only_the_parts_it_touches(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    _append(store, [1, 2, 3])
    _append(store, [4, 5])
    untouched = store.parts("artists")[-1]
    with store.transaction() as tx:
        tx.delete_where("artists", "artist_id = ? OR name = ?", [2, "artist 1' OR 1=1 --"])
        tx.append("artists", _artists([10]))
    assert _names(store) == [1, 3, 4, 5, 10]  # the quote is a value, not SQL
    parts = store.parts("artists")
    assert untouched in parts and sum("~" in part.name for part in parts) == 1  # one part rewritten, in its place


def test_a_transaction_that_raises_commits_nothing(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    _append(store, [1, 2])
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.delete_where("artists", "artist_id = ?", [1])
            tx.append("artists", _artists([3]))
            raise RuntimeError("changed my mind")
    assert _names(store) == [1, 2]


def test_vector_sizes_come_from_the_parts(tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    assert store.vector_size("embeddings") is None
    with store.transaction() as tx:
        tx.append("embeddings", pa.table({"track_id": pa.array([1, 2], pa.int64()), "model_id": ["m", "m"],
                                          "vector": fixed_vectors(np.eye(2, 3))}))
    assert store.vector_size("embeddings") == 3
    ids, matrix = store.vectors("embeddings", "model_id = ?", ["m"])
    assert ids.tolist() == [1, 2] and matrix.shape == (2, 3) and matrix.dtype == np.float32
    assert store.sql("SELECT typeof(vector) AS t FROM embeddings LIMIT 1")["t"][0].as_py() == "FLOAT[3]"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(st.integers(0, 10**9), max_size=20), min_size=1, max_size=6))
def test_compaction_keeps_content_identical(tmp_path_factory, batches):
    store = Store.open(tmp_path_factory.mktemp("c") / "s", create=True)
    for batch in batches:
        _append(store, batch)
    before = store.query("SELECT * FROM artists").to_pylist()
    store.compact()
    assert len(store.parts("artists")) == 1
    assert store.query("SELECT * FROM artists").to_pylist() == before


@given(rows=st.integers(1, 40), bins=st.integers(1, 20), seed=st.integers(0, 2**16))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_frames_read_whole_equal_frames_memory_mapped(tmp_path, rows, bins, seed):
    from agf.store import FrameCache

    cache = FrameCache(tmp_path, "mfcc")
    cache.write(seed, np.random.default_rng(seed).normal(size=(rows, bins)) * 100)
    loaded = cache.load(seed)
    assert loaded.dtype == np.float16 and loaded.shape == (rows, bins)
    np.testing.assert_array_equal(loaded, cache.read(seed))


@pytest.mark.parametrize("frames, why", [
    (np.zeros((30, 7), np.float16), r"float16 of shape \(30, 7\), not \(frames, 13\)"),
    (np.zeros((0, 13), np.float16), r"shape \(0, 13\)"),
    (np.zeros(13, np.float16), r"shape \(13,\)"),
    (np.zeros((3, 13, 2), np.float16), r"shape \(3, 13, 2\)"),
    (np.full((3, 13), "ab"), r"<U2 of shape"),
    (np.full((3, 13), np.inf, np.float16), "values that are not finite"),
    (np.full((3, 13), np.nan, np.float32), "values that are not finite"),
])
def test_frames_no_reader_could_use_are_damaged_in_one_line_however_read(tmp_path, frames, why):
    from agf.store import FrameCache

    cache = FrameCache(tmp_path, "mfcc", bins=13)
    cache.write(1, np.ones((3, 13)))
    np.save(cache.path(2), frames)  # a hostile store's: a valid .npy, but not frames agf could have written
    for read in (cache.read, cache.load):
        with pytest.raises(AgfError, match=f"frames of track 2 are damaged .*{why}.*run `agf check`"):
            read(2)
    assert cache.load(1).shape == (3, 13)


def test_a_frame_file_agf_did_not_write_is_read_by_numpy_and_a_damaged_one_is_one_line(tmp_path):
    import os

    from agf.store import FrameCache

    cache = FrameCache(tmp_path, "mfcc")
    cache.write(1, np.ones((3, 2)))
    np.save(cache.path(2), np.arange(6, dtype=np.float32).reshape(3, 2))  # another dtype: numpy's reader
    np.testing.assert_array_equal(cache.load(2), np.arange(6).reshape(3, 2))
    cache.path(3).write_bytes(cache.path(1).read_bytes()[:-3])  # cut short
    with pytest.raises(AgfError, match="frames of track 3 are damaged .* run `agf check`"):
        cache.load(3)
    os.mkfifo(cache.path(4))  # would block a reader: refused before it is opened
    with pytest.raises(AgfError, match="is not a regular file: refused"):
        cache.load(4)

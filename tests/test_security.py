"""Security: a hostile query, or a store from a stranger, can neither write, read outside, nor run code.

The attacker's tools are SQL given to ``agf sql`` (or ``Store.sql``) and a store directory whose
rows, sidecars, journals, parts and model files were rewritten at will, hashes recomputed. A
folder beside the store holds a secret that must never be read, and must gain no file; a
pickle that would create a marker file proves, by the marker's absence, that no code ran.
"""

import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

from agf.errors import AgfError
from agf.models.factors import load_factor_model
from agf.store import Store
from agf.store.registry import latest_model, sha256_bytes
from killing import AGF

SECRET = "agf-secret-7f3a9c"


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time: what "unchanged" means."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if not p.is_dir() or p.is_symlink()}


def one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder beside the store: a secret as CSV and Parquet, and nothing else may appear in it."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.csv").write_text(f"word\n{SECRET}\n")
    pq.write_table(pa.table({"word": [SECRET]}), folder / "secret.parquet")
    return folder


class _RunsCode:
    """Unpickling this creates ``marker``: the payload a hostile pickle would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps(_RunsCode(marker))


# -- hostile SQL ------------------------------------------------------------------------------------

ATTACKS = [
    "explain analyze copy (select 1 as a) to '{outside}/x.csv'",
    "explain analyze copy tracks to '{part}' (format parquet)",
    "explain analyze copy (select 1 as track_id) to '{part}' (format parquet, use_tmp_file false)",
    "explain (format json) copy (select 1) to '{outside}/j.csv'",
    "select content from read_text('{outside}/secret.csv')",
    "select content from read_text('/etc/passwd')",
    "select * from read_csv('{outside}/secret.csv')",
    "select * from read_blob('{outside}/secret.csv')",
    "select * from glob('{outside}/*')",
    "select * from read_parquet('{outside}/secret.parquet')",
    "select * from read_parquet('{part}/../../../../outside/secret.parquet')",
    "attach '{outside}/x.duckdb' as x",
    "attach ':memory:' as m",
    "install httpfs",
    "load httpfs",
    "select * from query('copy (select 1) to ''{outside}/q.csv''')",
    "with t as (select 1) select * from read_text('{outside}/secret.csv')",
    "set enable_external_access = true",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_hostile_sql_is_a_one_line_error_that_reads_and_writes_nothing(small_store, outside, attack, cli):
    part = next((small_store / "tables" / "tracks").glob("*.parquet"))
    store_before, outside_before = files_of(small_store), files_of(outside)
    out = cli("sql", attack.format(outside=outside, part=part), "--store", small_store)
    assert SECRET not in one_error_line(out)
    assert files_of(small_store) == store_before and files_of(outside) == outside_before
    assert cli("sql", "select count(*) as n from tracks", "--store", small_store, "--json").stdout.strip() \
        == '[\n  {\n    "n": 27\n  }\n]'


def test_the_readme_queries_still_work_in_the_sandbox(small_store, cli):
    for query in ["select a.name, count(*) from tracks t join artists a using (artist_id) group by 1 order by 2 desc",
                  "select * from genres",
                  "explain select count(*) from tracks",
                  "explain analyze select count(*) from tracks",
                  "select * from query('select count(*) as n from tracks')",
                  "select a.track_id, array_cosine_similarity(a.vector, b.vector) from features_mfcc a, features_mfcc b "
                  "where b.track_id = 1 limit 3"]:
        out = cli("sql", query, "--store", small_store)
        assert out.exit_code == 0, out.output


# Statements of DuckDB's types that write, attach, load, configure or read a path.
INNER = [
    "COPY (SELECT 1 AS a) TO '{outside}/{name}.csv'",
    "COPY tracks TO '{outside}/{name}.parquet' (FORMAT parquet)",
    "COPY artists FROM '{outside}/secret.csv'",
    "EXPORT DATABASE '{outside}/{name}'",
    "IMPORT DATABASE '{outside}'",
    "ATTACH '{outside}/{name}.duckdb' AS {name}",
    "DETACH memory",
    "INSTALL json",
    "LOAD parquet",
    "CREATE TABLE {name} AS SELECT * FROM read_text('{outside}/secret.csv')",
    "INSERT INTO artists VALUES (1, 'x', 'x')",
    "SET threads = 1",
    "PRAGMA threads = 1",
    "CALL pragma_version()",
    "CHECKPOINT",
    "VACUUM",
    "SELECT * FROM read_text('{outside}/secret.csv')",
    "SELECT * FROM read_csv('{outside}/secret.csv')",
    "SELECT * FROM read_csv_auto('{outside}/secret.csv')",
    "SELECT * FROM read_json('{outside}/secret.csv')",
    "SELECT * FROM read_blob('{outside}/*')",
    "SELECT * FROM read_parquet('{outside}/secret.parquet')",
    "SELECT * FROM parquet_metadata('{outside}/secret.parquet')",
    "SELECT * FROM parquet_schema('{outside}/secret.parquet')",
    "SELECT * FROM glob('{outside}/*')",
    "SELECT * FROM sniff_csv('{outside}/secret.csv')",
    "SELECT word FROM '{outside}/secret.parquet'",
]
WRAPPERS = [
    "{s}",
    "EXPLAIN {s}",
    "EXPLAIN ANALYZE {s}",
    "explain (format json) {s}",
    "WITH c AS (SELECT 1) {s}",
    "SELECT * FROM ({s})",
    "SELECT * FROM query('{q}')",
    "SELECT (SELECT count(*) FROM ({s}))",
    "SELECT 1; {s}",
    "{s}; SELECT 1",
]


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(inner=st.sampled_from(INNER), wrappers=st.lists(st.sampled_from(WRAPPERS), min_size=1, max_size=3),
       name=st.sampled_from(["x", "evil", "tracks"]))
def test_no_statement_however_wrapped_writes_a_file_or_reads_outside_the_store(small_store, outside, inner, wrappers,
                                                                              name):
    statement = inner.format(outside=outside, name=name)
    for wrapper in wrappers:
        statement = wrapper.format(s=statement, q=statement.replace("'", "''"))
    store_before, outside_before = files_of(small_store), files_of(outside)
    with Store.open(small_store) as store:
        try:
            result = str(store.sql(statement).to_pylist())
        except AgfError as exc:
            result = str(exc)
    assert SECRET not in result
    assert files_of(outside) == outside_before and files_of(small_store) == store_before


LONG_QUERY = "SELECT count(*) FROM range(1000000000000) t WHERE t.range % 7 = 3"


def test_a_query_past_its_time_limit_is_interrupted_with_one_line(small_store, cli):
    out = cli("sql", LONG_QUERY, "--timeout", "0.5", "--store", small_store)
    assert one_error_line(out) == "Error: the query ran past its time limit of 0.5 s"
    with Store.open(small_store) as store, pytest.raises(AgfError, match="time limit of 0.2 s"):
        store.sql(LONG_QUERY, timeout=0.2)


def test_ctrl_c_stops_a_query_with_one_line(small_store):
    process = subprocess.Popen([*AGF, "sql", LONG_QUERY, "--store", str(small_store)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               # a shell runs background jobs with SIGINT ignored: restore it in the child
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        time.sleep(6)  # past the imports, into the query
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode != 0 and err.strip().splitlines() == ["Error: query interrupted"], err


# -- model files hold data, not code ------------------------------------------------------------------


@pytest.fixture
def store_copy(trained, tmp_path) -> Path:
    """A copy of the trained store (factors, CNNs, transfer model, embeddings, indexes) to tamper with."""
    root = tmp_path / "store"
    shutil.copytree(trained["store"], root)
    from agf.app.indexing import build_indexes

    with Store.open(root, write=True) as store:
        build_indexes(store, quiet=True)
    return root


def test_a_store_agf_writes_holds_no_pickle_and_its_factor_models_reload_exactly(trained):
    root = trained["store"]
    assert not list(root.rglob("*.pkl"))
    with Store.open(root) as store:
        row = latest_model(store, "factors", "mfcc")
        assert row["path"].endswith("model.npz")
        with np.load(root / row["path"], allow_pickle=False) as npz:
            assert "lda.components_" in npz.files and "dictionary.centroids" in npz.files
        fitted = load_factor_model(store, row["model_id"])
        dictionary, lda = fitted.dictionary_, fitted.lda_
        bags = store.query("SELECT artist_id, word_ids, weights FROM artist_bow WHERE model_id = ? ORDER BY artist_id",
                           [row["model_id"]]).to_pylist()
        stored = store.query("SELECT factors FROM agf WHERE model_id = ? ORDER BY artist_id", [row["model_id"]])
    matrix = sparse.vstack([sparse.csr_matrix((np.asarray(b["weights"], np.float32), b["word_ids"], [0, len(b["word_ids"])]),
                                              shape=(1, dictionary.size)) for b in bags]).tocsr()
    # the reloaded LDA projects each artist's bag to the factors stored when it was fitted
    np.testing.assert_array_equal(lda.transform(matrix).astype(np.float32), np.asarray(stored["factors"].to_pylist(), np.float32))


def _point_models_at(root: Path, path_of: callable) -> None:
    """Rewrite every models row's path with ``path_of(row)`` -> (path, bytes), sha256 recomputed."""
    parts = sorted((root / "tables" / "models").glob("*.parquet"))
    rows = [row for part in parts for row in pq.read_table(part).to_pylist()]
    for row in rows:
        row["path"], data = path_of(row)
        row["sha256"] = sha256_bytes(data)
    table = pa.Table.from_pylist(rows, schema=pq.read_schema(parts[-1]))
    for part in parts:
        part.unlink()
    pq.write_table(table, parts[0])


COMMANDS = [
    ("factors", "update"),
    ("evaluate", "--out", "{tmp}/report"),
    ("similar", "--id", "1"),
    ("index", "build"),
    ("tag", "{clip}"),
    ("embed",),
    ("train", "--target", "transfer", "--epochs", "1"),
]


@pytest.mark.parametrize("how", ["absolute path", "dot-dot", "symlink out"])
def test_a_store_whose_models_point_outside_it_is_refused_by_every_command(store_copy, outside, tmp_path, trained,
                                                                          how, cli):
    marker = tmp_path / "code-ran"
    evil = outside / "model.pkl"
    evil.write_bytes(evil_pickle(marker))
    (store_copy / "models" / "link").symlink_to(outside)
    path_of = {"absolute path": lambda row: (str(evil), evil.read_bytes()),
               "dot-dot": lambda row: (f"models/../../outside/{evil.name}", evil.read_bytes()),
               "symlink out": lambda row: (f"models/link/{evil.name}", evil.read_bytes())}[how]
    _point_models_at(store_copy, path_of)
    # and the index files lead out too (their sidecars' sha256 recomputed)
    for index in (store_copy / "indexes").glob("*.faiss"):
        sidecar = index.with_suffix(".json")
        shutil.copy(index, outside / index.name)
        index.unlink()
        index.symlink_to(outside / index.name)
        sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "sha256": sha256_bytes(index.read_bytes())}))
    store_before, outside_before = files_of(store_copy), files_of(outside)
    clip = next(trained["corpus"].rglob("*.flac"))
    for command in COMMANDS:
        out = cli(*[a.format(tmp=tmp_path, clip=clip) for a in command], "--store", store_copy, "--quiet")
        assert "outside the store" in one_error_line(out), command
        assert not marker.exists() and files_of(store_copy) == store_before and files_of(outside) == outside_before


def test_a_model_file_that_is_a_pickle_inside_the_store_is_refused_without_running(store_copy, tmp_path, trained, cli):
    marker = tmp_path / "code-ran"
    payload = evil_pickle(marker)
    for model in (store_copy / "models").glob("*/model.*"):
        model.write_bytes(payload)
    _point_models_at(store_copy, lambda row: (row["path"], payload))
    out = cli("factors", "update", "--store", store_copy)
    assert "is not an array file agf can read" in one_error_line(out)
    out = cli("tag", next(trained["corpus"].rglob("*.flac")), "--store", store_copy)
    assert "refused by torch's weights-only loader" in one_error_line(out)
    assert not marker.exists()


@pytest.mark.parametrize("array, value", [("dictionary.mean", np.nan), ("dictionary.scale", 0.0),
                                          ("dictionary.centroids", np.inf)])
def test_a_factor_model_whose_dictionary_holds_numbers_agf_never_writes_is_one_line(store_copy, array, value, cli):
    """A NaN mean or centroid, or a zero scale, would send every point to no cluster (FAISS's -1),
    and projecting new tracks then failed with a traceback."""

    def path_of(row):
        data = (store_copy / row["path"]).read_bytes()
        if row["kind"] == "factors" and row["target"] == "mfcc":
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            arrays[array] = np.full_like(arrays[array], value)
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            data = buffer.getvalue()
            (store_copy / row["path"]).write_bytes(data)
        return row["path"], data

    _point_models_at(store_copy, path_of)
    out = cli("factors", "update", "--store", store_copy)
    assert "holds arrays of inconsistent shapes or values; it was damaged" in one_error_line(out)


@pytest.mark.parametrize("ranges", [torch.full((7, 2), float("nan")), torch.tensor([[-1e38, 1e38]] * 7), torch.zeros(3, 2),
                                    torch.tensor([[1.0, -1.0]] * 7), "not a tensor"])
def test_a_cnn_whose_activation_ranges_agf_never_writes_is_one_line(store_copy, trained, ranges, cli):
    """8-bit inference divides by them: a NaN would quantize every activation to nothing."""

    def path_of(row):
        data = (store_copy / row["path"]).read_bytes()
        if row["kind"] == "cnn":
            checkpoint = torch.load(io.BytesIO(data), weights_only=True)
            buffer = io.BytesIO()
            torch.save({**checkpoint, "activation_ranges": ranges}, buffer)
            data = buffer.getvalue()
            (store_copy / row["path"]).write_bytes(data)
        return row["path"], data

    _point_models_at(store_copy, path_of)
    out = cli("tag", next(trained["corpus"].rglob("*.flac")), "--precision", "fp32", "--store", store_copy)
    assert "activation ranges are not 7 (low, high) pairs within ±1e+06" in one_error_line(out)


# -- migrating the pickles of an older store ---------------------------------------------------------


def _as_written_by_agf_0_1(root: Path, pickled_of=None) -> None:
    """Turn the store back into format 2: each factor model pickled as ``model.pkl``, as agf 0.1 wrote it."""
    with Store.open(root) as store:
        models = {row["model_id"]: load_factor_model(store, row["model_id"])
                  for row in store.query("SELECT model_id FROM models WHERE kind = 'factors'").to_pylist()}

    def path_of(row):
        if row["model_id"] not in models:
            return row["path"], (root / row["path"]).read_bytes()
        fitted = models[row["model_id"]]
        data = pickled_of(row) if pickled_of else _pickled_as_agf_0_1(fitted.dictionary_, fitted.lda_)
        (root / row["path"]).unlink()
        pkl = Path(row["path"]).with_name("model.pkl")
        (root / pkl).write_bytes(data)
        return str(pkl), data

    _point_models_at(root, path_of)
    meta = json.loads((root / "store.json").read_text())
    (root / "store.json").write_text(json.dumps({**meta, "format_version": 2}))


def _pickled_as_agf_0_1(dictionary, lda) -> bytes:
    """The pickle agf 0.1 wrote: its Dictionary class then lived in agf.models.factors (which
    still imports it, so pickle finds it there while the class names that module), and its LDA
    was scikit-learn's own class."""
    from sklearn.decomposition import LatentDirichletAllocation

    cls = type(dictionary)
    home, cls.__module__ = cls.__module__, "agf.models.factors"
    plain = LatentDirichletAllocation.__new__(LatentDirichletAllocation)  # agf 0.1 fitted scikit-learn's own class
    plain.__dict__.update(lda.__dict__)
    try:
        return pickle.dumps({"dictionary": dictionary, "lda": plain, "params": {}})
    finally:
        cls.__module__ = home


def test_migrate_turns_pickled_factor_models_into_arrays_that_project_the_same(store_copy, cli):
    with Store.open(store_copy) as store:
        row = latest_model(store, "factors", "mfcc")
        before = load_factor_model(store, row["model_id"]).lda_
    _as_written_by_agf_0_1(store_copy)
    assert "run `agf migrate" in one_error_line(cli("factors", "update", "--store", store_copy))
    out = cli("migrate", "--store", store_copy, "--json")
    assert json.loads(out.stdout) == {"path": str(store_copy), "format_version_before": 2, "format_version": 3}
    assert not list(store_copy.rglob("*.pkl"))
    with Store.open(store_copy) as store:
        after = load_factor_model(store, row["model_id"]).lda_
    bags = np.random.default_rng(0).uniform(0, 3, (5, before.components_.shape[1]))
    np.testing.assert_array_equal(after.transform(bags), before.transform(bags))
    assert cli("factors", "update", "--store", store_copy, "--quiet").exit_code == 0


def test_migrate_refuses_a_pickle_that_would_run_code(store_copy, tmp_path, cli):
    marker = tmp_path / "code-ran"
    _as_written_by_agf_0_1(store_copy, pickled_of=lambda row: evil_pickle(marker))
    before = files_of(store_copy)
    assert "is not a factor model agf wrote" in one_error_line(cli("migrate", "--store", store_copy))
    assert not marker.exists() and files_of(store_copy) == before


# -- journals, parts, frames and store.json from a stranger ------------------------------------------


def test_a_journal_naming_files_outside_the_store_is_refused_by_readers_and_writers(small_store, outside, tmp_path, cli):
    root = tmp_path / "store"
    shutil.copytree(small_store, root)
    (root / "journal").mkdir(exist_ok=True)
    (root / "journal" / "0000000000000001.json").write_text(json.dumps(
        {"renames": [["tables/tracks/x.parquet", "../outside/moved.csv"]], "deletions": [str(outside / "secret.csv")]}))
    before = files_of(outside)
    for command in (("info",), ("sql", "select 1"), ("compact",)):
        assert "not a table part" in one_error_line(cli(*command, "--store", root))
    assert files_of(outside) == before


@pytest.mark.parametrize("kind", ["symlink out", "fifo"])
def test_a_part_that_leads_out_or_blocks_is_refused(small_store, outside, tmp_path, kind, cli):
    root = tmp_path / "store"
    shutil.copytree(small_store, root)
    part = root / "tables" / "tracks" / "zzzz.parquet"
    if kind == "fifo":
        os.mkfifo(part)
    else:
        part.symlink_to(outside / "secret.parquet")
    for command in (("sql", "select * from tracks"), ("info",), ("tables",)):
        line = one_error_line(cli(*command, "--store", root))
        assert SECRET not in line and ("outside the store" in line or "not a regular file" in line)


def test_frames_behind_a_symlink_out_of_the_store_are_refused(trained, outside, tmp_path, cli):
    root = tmp_path / "store"
    shutil.copytree(trained["store"], root)
    folder = root / "frames" / "logmel" / "000"
    shutil.copytree(folder, outside / "000")
    shutil.rmtree(folder)
    folder.symlink_to(outside / "000")
    out = cli("train", "--target", "genre", "--epochs", "1", "--store", root, "--quiet")
    assert "outside the store" in one_error_line(out)


@pytest.mark.parametrize("change", [
    {"dims": {"features_mfcc": "1]) AS vector FROM parts_features_mfcc; COPY tracks TO '/tmp/x' --"}},
    {"sample_rate": "fast"},
    {"frames": {"logmel": {"n_fft": -1}}},
    {"format_version": "3"},
])
def test_a_malformed_store_json_is_refused_or_ignored_never_run(small_store, tmp_path, change, cli):
    root = tmp_path / "store"
    shutil.copytree(small_store, root)
    meta = json.loads((root / "store.json").read_text())
    (root / "store.json").write_text(json.dumps({**meta, **change}))
    out = cli("sql", "select count(*) as n from features_mfcc", "--store", root, "--json")
    if "dims" in change:  # an unusable size is not used: vectors fall back to FLOAT[]
        assert out.exit_code == 0 and json.loads(out.stdout) == [{"n": 27}]
    else:
        assert "is malformed" in one_error_line(out)
    assert not Path("/tmp/x").exists()


def test_an_audio_path_that_is_a_fifo_is_an_error_row_not_a_hang(trained, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(trained["store"], root)
    fifo = tmp_path / "song.mp3"
    os.mkfifo(fifo)
    result = subprocess.run([*AGF, "tag", str(fifo), "--store", str(root), "--json", "--quiet"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "not a regular file (a FIFO)" in json.loads(result.stdout)[0]["error"]

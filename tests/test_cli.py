"""The CLI as users meet it: output formats, one-line errors, info, and the demo end to end."""

import io
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agf.output import render
from agf.store import Store


def test_sql_outputs_a_table_json_and_csv(small_store, cli):
    query = "SELECT genre_top, count(*) AS n FROM tracks GROUP BY 1 ORDER BY 1"
    table = cli("sql", query, "--store", small_store)
    assert table.exit_code == 0
    assert table.output.splitlines() == [
        "genre_top   n",
        "----------  -",
        "Electronic  9",
        "Hip-Hop     9",
        "Rock        9",
    ]
    assert json.loads(cli("sql", query, "--store", small_store, "--json").stdout) == [
        {"genre_top": "Electronic", "n": 9}, {"genre_top": "Hip-Hop", "n": 9}, {"genre_top": "Rock", "n": 9}]
    assert cli("sql", query, "--store", small_store, "--csv").output == "genre_top,n\nElectronic,9\nHip-Hop,9\nRock,9\n"


def test_a_table_shows_long_cells_clipped_and_json_gives_them_whole(small_store, cli):
    query = "select repeat('ab', 100) as long, 'line one' || chr(10) || 'line two' as multi"
    table = cli("sql", query, "--store", small_store).stdout.splitlines()
    assert table[2] == "ab" * 29 + "a…  line one line two"
    assert json.loads(cli("sql", query, "--store", small_store, "--json").stdout) == [
        {"long": "ab" * 100, "multi": "line one\nline two"}]


def test_the_store_comes_from_AGF_STORE(small_store, cli):
    out = cli("sql", "SELECT count(*) AS n FROM artists", "--json", env={"AGF_STORE": str(small_store)})
    assert json.loads(out.stdout) == [{"n": 9}]


def test_user_errors_are_one_line_with_a_non_zero_exit(small_store, tmp_path, cli):
    cases = {
        ("sql", "SELECT 1", "--store", tmp_path / "none"): "Error: no agf store at",
        ("sql", "SELECT * FROM no_such_table", "--store", small_store): "Error: Catalog Error",
        ("sql", "SELEC 1", "--store", small_store): "Error: Parser Error",
        ("sql", "DELETE FROM tracks", "--store", small_store): "Error: agf sql is read-only: DELETE statements are not allowed",
        ("compact", "--table", "nope", "--store", small_store): "Error: unknown table 'nope'",
        ("embed", "--precision", "fp16", "--store", small_store): "Error: unknown precision 'fp16'; choose auto, fp32, bf16",
        ("evaluate", "--precision", "half", "--store", small_store): "Error: unknown precision 'half'",
    }
    for args, message in cases.items():
        out = cli(*args)
        assert out.exit_code == 1, args
        assert len(out.output.strip().splitlines()) == 1 and out.output.startswith(message), out.output


def test_info_lists_tables_frames_and_models(small_store, cli):
    out = cli("info", "--store", small_store, "--json")
    info = json.loads(out.stdout)
    assert info["format_version"] == 3 and info["sample_rate"] == 22050
    rows = {t["table"]: t["rows"] for t in info["tables"]}
    assert rows["tracks"] == 27 and rows["features_fma"] == 27 and rows["artists"] == 9
    assert info["frames"]["logmel"]["tracks"] == 27
    text = cli("info", "--store", small_store).output
    assert "features_fma" in text and "format_version: 3" in text


def test_version_and_help_in_the_order_people_work(small_store, cli):
    from agf import __version__

    assert cli("--version").stdout == f"agf {__version__}\n"
    assert json.loads(cli("info", "--store", small_store, "--json").stdout)["agf_version"] == __version__
    text = cli("--help").stdout
    panels = [line.split("─ ")[1].split(" ─")[0] for line in text.splitlines() if line.startswith("╭─ ")]
    assert panels == ["Options", "Start", "Learn", "Use", "Look after"]
    listed = [line.split()[1] for line in text.splitlines() if line.startswith("│ ") and line[2].isalpha()]
    assert listed[:4] == ["demo", "ingest", "factors", "train"] and listed[-2:] == ["compact", "migrate"]


def _commands() -> dict[str, object]:
    """Every leaf command of the CLI, by its full name ('sql', 'factors build', ...)."""
    import typer.main

    from agf.cli import app

    leaves = {}
    for name, command in typer.main.get_command(app).commands.items():
        for leaf_name, leaf in getattr(command, "commands", {name: command}).items():
            leaves[name if leaf is command else f"{name} {leaf_name}"] = leaf
    return leaves


COMMANDS = _commands()
#: Commands whose example makes a store where there is none.
CREATING = {"ingest", "demo"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_command_s_help_ends_with_an_example_of_itself(name, cli):
    example = COMMANDS[name].help.strip().splitlines()[-1]
    assert example.startswith(f"Example: agf {name}"), example
    assert cli(*name.split(), "--help").exit_code == 0


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_command_s_help_is_paragraphs_the_terminal_wraps_not_the_docstring_s_lines(name, cli):
    paragraphs = COMMANDS[name].help.strip().split("\n\n")
    assert all("\n" not in p for p in paragraphs), paragraphs
    shown = cli(*name.split(), "--help", env={"COLUMNS": "80"}).stdout
    prose = [line.strip() for line in shown.split("Usage:")[1].split("╭")[0].splitlines()[1:]]  # above the boxes
    # a line ends only where the next word would not have fitted in the 78 columns inside the margins
    assert all(len(line) + 1 + len(next_line.split()[0]) > 78 for line, next_line in zip(prose, prose[1:])
               if line and next_line), prose


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - CREATING))
def test_a_command_s_example_where_nothing_exists_is_one_line_of_error(name, cli, tmp_path):
    import shlex

    args = [a for a in shlex.split(COMMANDS[name].help.strip().splitlines()[-1].removeprefix("Example: agf "))]
    if "--store" in args:
        del args[args.index("--store"):args.index("--store") + 2]
    out = cli(*args, "--store", tmp_path / "nowhere")
    assert out.exit_code == 1
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and ("no agf store at" in lines[0] or "does not exist" in lines[0])


def test_demo_quick_runs_end_to_end_and_leaves_the_folder_it_runs_in_empty(tmp_path, cli, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    out = cli("demo", "--quick", "--json", "--quiet", env={"XDG_DATA_HOME": str(tmp_path / "data")})
    assert out.exit_code == 0, out.output
    assert list(here.iterdir()) == []
    demo = tmp_path / "data" / "agf" / "demo"
    report = json.loads(out.stdout)
    assert report["ingest"][0]["ingested"] == 128 and report["ingest"][0]["failed"] == 0
    assert all(isinstance(part, list) for part in report.values())  # every part prints as a table, none as a raw dict
    assert [f["source"] for f in report["factors"]] == ["mfcc", "dmfcc", "fma", "tags"]
    assert [t["target"] for t in report["training"]] == ["genre", "agf:mfcc", "agf:dmfcc", "agf:fma", "agf:tags", "transfer"]
    models = [r["model"].split(" (")[0] for r in report["genre_report"]]
    assert models == ["genre CNN", "transfer MLP", "baseline: logistic regression on fma"]
    # calibrated, no model is worse than guessing uniformly over the 8 genres, and each one's calibration is measured
    assert all(r["log_loss"] < np.log(8) and 0 <= r["ece"] <= 1 for r in report["genre_report"]), report["genre_report"]
    for name in ("Rock Artist 1", "Classical Artist 2"):
        assert [n["rank"] for n in report[f"similar to {name}"]] == [1, 2, 3]
    *held_out, newcomer = report["tagged (held-out tracks, then a Jazz track by a new artist)"]
    assert len(held_out) == 3 and newcomer["file"] == "new-music/newcomer.flac"
    assert all(t["genre"] is not None and 0 < t["probability"] <= 1 for t in [*held_out, newcomer])
    store = Store.open(demo / "store")
    fitted = [json.loads(m["metrics"]) for m in store.query("SELECT metrics FROM models WHERE target = 'genre'").to_pylist()]
    assert len(fitted) == 2 and all(m["temperature"] > 0 for m in fitted)
    assert store.count("features_fma") == 128 and store.count("embeddings") == 5 * 129
    evaluated = store.query("SELECT track_id, genre, probability FROM predictions WHERE rank = 1").to_pylist()
    # One artist per genre held out (8 x 4 tracks), predicted once (tagging replaced, not doubled), and the newcomer.
    assert len(evaluated) == len({e["track_id"] for e in evaluated}) == 8 * 4 + 1
    assert (demo / "store" / "reports" / "evaluate" / "confusion.png").exists()
    indexes = json.loads(cli("index", "list", "--json", "--store", demo / "store").stdout)
    assert indexes and not any(i["stale"] for i in indexes)  # the demo's last step: the next search is fresh


CELLS = st.one_of(st.none(), st.integers(), st.floats(), st.text(), st.lists(st.integers(), max_size=6),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4, unique=True).flatmap(
    lambda keys: st.lists(st.fixed_dictionaries({k: CELLS for k in keys}), max_size=5)),
    st.sampled_from(["json", "csv", "table"]))
def test_rows_streamed_one_by_one_print_exactly_as_a_list_of_them_does(rows, fmt):
    whole, streamed = io.StringIO(), io.StringIO()
    render(rows, fmt, whole)
    render(iter(rows), fmt, streamed)
    assert streamed.getvalue() == whole.getvalue()

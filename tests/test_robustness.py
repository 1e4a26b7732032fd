"""Robustness: everyday runs never crash, hang, or leave debris behind.

Each test is one of the ordinary mistakes and accidents a new user meets: two first runs at
once, a file name from another system, a FIFO in a manifest, a killed ingest, a damaged part,
a reader holding the store, a lost store.json.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agf.store import Store
from agf.store.parts import commit_lock
from killing import AGF, survivors


def one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def tone(path: Path, hz: float, seconds: float = 2.0, rate: int = 22050) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(os.fsencode(path), (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate, format="WAV")
    return path


def copy_of(source: Path, tmp_path: Path) -> Path:
    root = tmp_path / "store"
    shutil.copytree(source, root)
    return root


def at_once(commands: list[list[str]], env: dict) -> list[tuple[int, str, str]]:
    """Start every command together; (exit status, stdout, stderr) of each, in order."""
    runs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    return [(run.wait(timeout=600), *run.communicate()) for run in runs]


def test_first_runs_at_once_on_an_empty_compiled_cache_all_succeed_and_so_does_the_next(tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    tone(folder / "a.wav", 440.0)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}  # empty: every run would compile
    command = [*AGF, "ingest", str(folder), "--features", "fma", "--workers", "1", "--quiet", "--json"]
    results = at_once([[*command, "--store", str(tmp_path / f"s{i}")] for i in range(3)], env)
    assert [code for code, _, _ in results] == [0, 0, 0], [err for _, _, err in results]
    assert all(json.loads(out)["ingested"] == 1 for _, out, _ in results)
    assert (tmp_path / "numba" / ".agf-compile.lock").exists() and any((tmp_path / "numba").rglob("*.nbi"))
    again = subprocess.run([*command, "--store", str(tmp_path / "s3")], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and json.loads(again.stdout)["ingested"] == 1, again.stderr


FUSED_POOLING = """
import torch
from agf.models.fused import pool_elu
x = torch.randn(4, 32, 8, 8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
print(tuple(pool_elu(x, (2, 2)).shape), tuple(pool_elu(x, (2, 1)).shape))
"""


def test_bfloat16_inference_kernels_compile_once_into_agfs_cache_even_when_processes_start_together(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}  # empty: every process would compile
    results = at_once([[sys.executable, "-c", FUSED_POOLING]] * 3, env)
    assert [code for code, _, _ in results] == [0, 0, 0], [err for _, _, err in results]
    assert all(out.split() == ["(4,", "32,", "4,", "4)", "(4,", "32,", "4,", "8)"] for _, out, _ in results)
    assert any("fused" in p.name for p in (tmp_path / "numba").rglob("*.nbi"))


def test_a_file_name_that_is_not_utf8_is_ingested_and_shown_escaped(tmp_path, cli):
    folder = tmp_path / "audio"
    folder.mkdir()
    odd = tone(Path(os.fsdecode(bytes(folder) + b"/bad\xff\xfe.wav")), 330.0)
    tone(folder / "good.wav", 550.0)
    out = cli("ingest", folder, "--store", tmp_path / "s", "--json", "--quiet")
    assert out.exit_code == 0 and json.loads(out.stdout)["ingested"] == 2, out.output
    paths = json.loads(cli("sql", "select path from tracks order by path", "--store", tmp_path / "s", "--json").stdout)
    assert [p["path"] for p in paths] == [f"{folder}/bad\\xff\\xfe.wav", f"{folder}/good.wav"]
    assert odd.exists()
    again = cli("ingest", folder, "--store", tmp_path / "s", "--json", "--quiet")
    assert json.loads(again.stdout)["skipped"] == 2


def test_fifos_devices_and_folders_in_a_manifest_become_error_rows_without_hanging(tmp_path):
    os.mkfifo(tmp_path / "pipe.mp3")
    (tmp_path / "folder.mp3").mkdir()
    tone(tmp_path / "real.wav", 440.0)
    (tmp_path / "m.csv").write_text("path\npipe.mp3\n/dev/zero\nfolder.mp3\nreal.wav\n")
    result = subprocess.run([*AGF, "ingest", str(tmp_path), "--manifest", str(tmp_path / "m.csv"), "--store",
                             str(tmp_path / "s"), "--json", "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and json.loads(result.stdout)["failed"] == 3, result.stderr
    with Store.open(tmp_path / "s") as store:
        errors = store.query("SELECT path, error FROM ingest_errors ORDER BY path").to_pylist()
    assert sorted(e["error"] for e in errors) == ["cannot read file: not a regular file (a FIFO)",
                                                  "cannot read file: not a regular file (a device or socket)",
                                                  "cannot read file: not a regular file (a folder)"]


def test_a_killed_ingest_leaves_no_worker_running(small_corpus, tmp_path):
    root = tmp_path / "s"
    process = subprocess.Popen([*AGF, "ingest", str(small_corpus.parent), "--manifest", str(small_corpus),
                                "--workers", "2", "--part-size", "2", "--store", str(root), "--quiet"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(survivors(process.pid)) < 3 and time.monotonic() < deadline:  # agf and its two workers
            time.sleep(0.05)
        workers = [pid for pid in survivors(process.pid) if pid != process.pid]
        assert len(workers) == 2
        os.kill(process.pid, signal.SIGKILL)  # the parent alone, as `kill -9` does
        process.wait()
        deadline = time.monotonic() + 10
        while survivors(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert survivors(process.pid) == []
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_damaged_part_is_one_line_everywhere_and_agf_check_names_and_sets_it_aside(small_store, tmp_path, cli):
    root = copy_of(small_store, tmp_path)
    part = max((root / "tables" / "tracks").glob("*.parquet"), key=lambda p: p.stat().st_size)
    _truncate(part)
    for command in (("info",), ("tables",), ("sql", "select count(*) from tracks"), ("compact",)):
        assert "run `agf check`" in one_error_line(cli(*command, "--store", root)), command
    out = cli("check", "--store", root, "--json")
    assert out.exit_code == 1 and "1 damaged of" in out.stderr
    [finding] = json.loads(out.stdout)
    assert finding["kind"] == "table" and finding["name"] == "tracks" and finding["file"] == str(part.relative_to(root))
    assert finding["rebuild"].startswith("agf ingest")
    repaired = json.loads(cli("check", "--repair", "--store", root, "--json").stdout)
    assert repaired[0]["action"].startswith("moved to quarantine/") and not part.exists()
    assert list((root / "quarantine").rglob(part.name))
    assert cli("check", "--store", root).exit_code == 0
    assert cli("sql", "select count(*) from tracks", "--store", root).exit_code == 0


def test_agf_check_finds_damaged_frames_indexes_and_models(trained, tmp_path, cli):
    root = copy_of(trained["store"], tmp_path)
    assert cli("index", "build", "--store", root, "--quiet").exit_code == 0
    assert cli("check", "--store", root).exit_code == 0
    frame = next((root / "frames" / "logmel").rglob("*.npy"))
    _truncate(frame)
    index = next((root / "indexes").glob("*.faiss"))
    index.write_bytes(index.read_bytes()[:-8] + b"tampered")
    model = next((root / "models").rglob("model.pt"))
    model.write_bytes(model.read_bytes() + b"!")
    found = json.loads(cli("check", "--store", root, "--json").stdout)
    assert sorted((f["kind"], f["file"]) for f in found) == sorted([
        ("frames", str(frame.relative_to(root))), ("index", str(index.relative_to(root))),
        ("model", str(model.relative_to(root)))])
    out = cli("train", "--target", "genre", "--epochs", "1", "--store", root, "--quiet")
    assert "agf check" in one_error_line(out)


def test_a_frame_matrix_of_the_wrong_width_is_one_line_and_agf_check_names_it(trained, tmp_path, cli):
    root = copy_of(trained["store"], tmp_path)
    frame = next((root / "frames" / "logmel").rglob("*.npy"))
    np.save(frame, np.zeros((300, 64), np.float16))  # the store's settings say 128 mel bands
    found = json.loads(cli("check", "--store", root, "--json").stdout)
    assert [(f["kind"], f["file"]) for f in found] == [("frames", str(frame.relative_to(root)))]
    assert "not (frames, 128)" in found[0]["problem"]
    out = cli("train", "--target", "genre", "--epochs", "1", "--store", root, "--quiet")
    assert "not (frames, 128)" in one_error_line(out) and "agf check" in out.output


def test_agf_check_names_fifos_in_place_of_an_index_and_a_model_without_hanging(trained, tmp_path):
    root = copy_of(trained["store"], tmp_path)
    subprocess.run([*AGF, "index", "build", "--store", str(root), "--quiet"], check=True, timeout=300)
    index, model = next((root / "indexes").glob("*.faiss")), next((root / "models").rglob("model.pt"))
    for path in (index, model):
        path.unlink()
        os.mkfifo(path)
    result = subprocess.run([*AGF, "check", "--store", str(root), "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.startswith("Error: 2 damaged of")
    found = {(f["kind"], f["file"]) for f in json.loads(result.stdout)}
    assert found == {("index", str(index.relative_to(root))), ("model", str(model.relative_to(root)))}
    assert all("not a regular file" in f["problem"] for f in json.loads(result.stdout))


def test_a_missing_frames_file_is_one_line_naming_agf_check(trained, tmp_path, cli):
    root = copy_of(trained["store"], tmp_path)
    next((root / "frames" / "logmel").rglob("*.npy")).unlink()
    out = cli("train", "--target", "genre", "--epochs", "1", "--store", root, "--quiet")
    assert "frames of track" in one_error_line(out) and "agf check" in out.output


def test_a_writer_says_it_waits_for_readers_and_gives_up_after_its_bound(small_store, tmp_path, cli):
    root = copy_of(small_store, tmp_path)
    parts = sorted(str(p) for p in root.rglob("*.parquet"))
    with commit_lock(root, exclusive=False):  # a reader mid-query
        result = subprocess.run([*AGF, "compact", "--wait", "1", "--store", str(root)], capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("waiting for readers of the store to finish (at most 1 s")
    assert lines[-1].startswith("Error: gave up after 1 s waiting for readers") and len(lines) == 2
    assert sorted(str(p) for p in root.rglob("*.parquet")) == parts and not list(root.rglob("*.tmp"))
    assert cli("compact", "--store", root).exit_code == 0  # the reader gone, the same command goes through


def test_evaluate_writes_its_report_inside_the_store(trained, tmp_path, cli, monkeypatch):
    root = copy_of(trained["store"], tmp_path)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert cli("evaluate", "--store", root, "--quiet").exit_code == 0
    assert (root / "reports" / "evaluate" / "report.json").exists() and list(here.iterdir()) == []


def test_a_store_that_lost_its_store_json_is_refused_not_recreated(small_store, small_corpus, tmp_path, cli):
    root = copy_of(small_store, tmp_path)
    (root / "store.json").unlink()
    out = cli("ingest", small_corpus.parent, "--manifest", small_corpus, "--store", root)
    assert "holds an agf store's tables but no store.json" in one_error_line(out)
    assert not (root / "store.json").exists()


def test_a_manifest_with_a_repeated_track_id_or_a_huge_field_is_one_line(tmp_path, cli):
    tone(tmp_path / "a.wav", 440.0)
    (tmp_path / "dup.csv").write_text("path,track_id\na.wav,7\na.wav,8\na.wav,7\n")
    out = cli("ingest", tmp_path, "--manifest", tmp_path / "dup.csv", "--store", tmp_path / "s")
    assert one_error_line(out).endswith("track_id '7' is on lines 2 and 4; each track needs an id of its own")
    (tmp_path / "huge.csv").write_text("path,title\na.wav," + "x" * 200_000 + "\n")
    out = cli("ingest", tmp_path, "--manifest", tmp_path / "huge.csv", "--store", tmp_path / "s")
    assert "field larger than field limit" in one_error_line(out)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("k", ["0", "-3"])
def test_similar_needs_a_positive_k(small_store, k, cli):
    assert one_error_line(cli("similar", "--id", "1", "-k", k, "--store", small_store)) == \
        f"Error: -k must be a positive number of neighbours, not {k}"


def test_a_folder_ingest_stores_absolute_paths(tmp_path, cli, monkeypatch):
    (tmp_path / "music").mkdir()
    tone(tmp_path / "music" / "a.wav", 440.0)
    monkeypatch.chdir(tmp_path)
    assert cli("ingest", "music", "--store", "s", "--quiet").exit_code == 0
    rows = json.loads(cli("sql", "select path from tracks", "--store", "s", "--json").stdout)
    assert rows == [{"path": str(tmp_path / "music" / "a.wav")}]


def test_the_progress_rate_is_the_average_the_summary_reports():
    from rich.progress import Progress

    from agf.progress import AverageRate

    progress = Progress(disable=True)
    task_id = progress.add_task("ingest", total=10)
    progress.start_task(task_id)
    time.sleep(0.2)
    progress.update(task_id, advance=4)
    task = progress.tasks[0]
    shown = float(AverageRate("files").render(task).plain.split()[0])
    assert shown == pytest.approx(4 / task.elapsed, rel=0.05)


def test_similar_warns_once_of_the_stale_index_it_reads_and_is_quiet_when_asked(trained, tmp_path, cli):
    root = copy_of(trained["store"], tmp_path)
    assert cli("index", "build", "--store", root, "--quiet").exit_code == 0
    assert cli("train", "--target", "transfer", "--epochs", "1", "--store", root, "--quiet").exit_code == 0  # stale now
    loud = cli("similar", "--id", "1", "--space", "agf:mfcc", "--store", root)
    # said once, for the one index this search read, with the command that refreshes it
    assert loud.stderr.strip().splitlines() == ["warning: the artist index of 'agf:mfcc' is older than the data it was "
                                                "built from; `agf index build --space agf:mfcc` refreshes it"]
    quiet = cli("similar", "--id", "1", "--store", root, "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_a_file_past_its_time_bound_becomes_an_error_row_and_the_next_run_takes_it(tmp_path, cli):
    tone(tmp_path / "a.wav", 440.0, seconds=20.0)
    out = cli("ingest", tmp_path, "--file-timeout", "0.001", "--workers", "1", "--store", tmp_path / "s", "--json",
              "--quiet")
    assert out.exit_code == 0 and json.loads(out.stdout)["failed"] == 1, out.output
    with Store.open(tmp_path / "s") as store:
        [error] = store.query("SELECT stage, error FROM ingest_errors").to_pylist()
    assert error == {"stage": "decode", "error": "took longer than 0.001 s (--file-timeout): skipped"}
    again = cli("ingest", tmp_path, "--store", tmp_path / "s", "--json", "--quiet")
    assert json.loads(again.stdout)["ingested"] == 1


def test_commands_run_too_early_name_the_command_that_comes_first(small_store, tmp_path, cli):
    root = copy_of(small_store, tmp_path)  # ingested, nothing learned yet
    expected = {
        ("similar", "--id", "1"): "run `agf index build`",
        ("index", "build"): "run `agf factors build`",
        ("factors", "update"): "run `agf factors build` first",
        ("factors", "show", "--id", "1"): "run `agf factors build`",
        ("embed",): "run `agf train --target all` first",
        ("train", "--target", "transfer"): "run `agf train --target all` first",
        ("tag", next(small_store.parent.parent.rglob("*.flac"), small_store)): "run `agf train --target all`",
    }
    for command, hint in expected.items():
        assert hint in one_error_line(cli(*command, "--store", root)), command
    out = cli("evaluate", "--store", root, "--json", "--full")
    assert out.exit_code == 0 and any("no trained genre model yet" in w for w in json.loads(out.stdout)["warnings"])
    assert "run `agf index build`" in cli("index", "list", "--store", root).stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_decoder_complaints_stay_off_the_terminal_and_are_counted_and_kept(game_music, tmp_path, workers):
    clip = sorted((game_music / "clips").rglob("*.mp3"))[0].read_bytes()
    damaged = bytearray(clip)
    for i in range(5000, len(damaged), 7919):  # flipped bytes through the frames: libmpg123 complains, then copes
        damaged[i] ^= 0xFF
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "damaged.mp3").write_bytes(bytes(damaged))
    (tmp_path / "in" / "cut.mp3").write_bytes(clip[:40_000])
    result = subprocess.run([*AGF, "ingest", str(tmp_path / "in"), "--workers", workers, "--store", str(tmp_path / "s"),
                             "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "libmpg123" not in result.stderr and "Xing" not in result.stderr
    summary = json.loads(result.stdout)
    assert summary["ingested"] == 2 and summary["decoder_warnings"] == 2
    assert "2 with decoder warnings: see ingest_errors" in result.stderr
    with Store.open(tmp_path / "s") as store:
        kept = store.query("SELECT stage, error FROM ingest_errors ORDER BY path").to_pylist()
    assert [k["stage"] for k in kept] == ["decode warning"] * 2
    assert "Xing stream size" in kept[0]["error"] and "libmpg123" in kept[1]["error"]
    # the cut file is read in several passes: what it is, then each complaint once
    assert kept[0]["error"].startswith("the file decodes to") and kept[0]["error"].count("Xing stream size") == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_a_process_allowed_one_core_counts_one_core_not_the_machines():
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); from agf.engine import usable_cores; print(usable_cores())"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "1"


_REUSE = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from agf.engine import keep_freed_memory
    keep_freed_memory()
block = 20 << 20  # a batch's activations, or a clip's samples
first = np.ones(block, np.uint8)
del first
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
again = np.ones(block, np.uint8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator policy")
def test_a_process_running_the_cnns_reuses_the_memory_it_frees_instead_of_faulting_it_in_again():
    def faults(mode: str) -> int:
        return int(subprocess.run([sys.executable, "-c", _REUSE, mode], capture_output=True, text=True,
                                  check=True).stdout)

    # glibc hands the block back and maps it afresh: a fault per page (at least one per 2 MB
    # huge page); kept, its pages are already there
    assert faults("keep") <= 3 < 8 <= faults("default")


def test_a_store_left_for_garbage_before_an_ingest_does_not_crash_its_workers(small_store, small_corpus, tmp_path):
    """A DuckDB connection torn down in a forked worker joins threads only its parent has: the
    worker crashed. Python users drop stores into reference cycles; a notebook then ingests."""
    import gc

    from agf.engine import LOCAL, map_tasks
    from agf.ingest import collect, ingest

    gc.disable()  # the cycle below reaches the worker as garbage, as it does between collections
    try:
        dropped = Store.open(small_store)
        dropped.query("SELECT count(*) FROM tracks")  # the store now holds a DuckDB connection
        cycle = [dropped]
        cycle.append(cycle)
        del dropped, cycle
        # a worker's full collection, which finds what its parent left for garbage
        assert [isinstance(found, int) for found in map_tasks(LOCAL, gc.collect, [2], workers=1)] == [True]
        store = Store.open(tmp_path / "s", create=True, write=True)
        candidates, _ = collect(small_corpus.parent, manifest=small_corpus)
        summary = ingest(store, candidates[:2], features=("mfcc",), workers=1, quiet=True)
        assert summary.ingested == 2
    finally:
        gc.enable()


def _count_tracks(item, store):
    return store.query("SELECT count(*) AS n FROM tracks")["n"][0].as_py()


def test_a_store_handed_to_worker_processes_answers_there_and_here(small_store):
    from agf.engine import LOCAL, map_tasks

    store = Store.open(small_store)
    here = _count_tracks(None, store)  # the parent's connection, which each worker inherits
    assert list(map_tasks(LOCAL, _count_tracks, [1, 2], shared={"store": store}, workers=2)) == [here, here]
    assert _count_tracks(None, store) == here

"""Ingest: manifests, FMA's layout, bare folders; incremental, interruptible, and safe on bad input."""

import json
import wave

import numpy as np
import pytest
import soundfile as sf

from agf.errors import AgfError
from agf.ingest import collect, ingest
from agf.ingest import pipeline
from agf.ingest.audio import AudioError, decode_clip
from agf.models.train import all_tracks
from agf.store import Store
from agf.store.store import DEFAULT_CONFIG

from fma_fixture import released_features, write_audio, write_fma


def test_game_music_ingests_every_clip_with_every_default_feature_set(game_store, cli):
    out = cli("sql", "SELECT count(*) AS tracks, count(DISTINCT artist_id) AS artists FROM tracks", "--store", game_store, "--json")
    assert out.exit_code == 0, out.output
    assert '"tracks": 128' in out.output and '"artists": 19' in out.output
    joined = cli(
        "sql",
        "SELECT a.name, count(*) AS n, min(len(m.vector)) AS mfcc_dim, min(len(d.vector)) AS dmfcc_dim "
        "FROM tracks t JOIN artists a USING (artist_id) JOIN features_mfcc m USING (track_id) "
        "JOIN features_dmfcc d USING (track_id) GROUP BY 1 ORDER BY n DESC, 1 LIMIT 1",
        "--store", game_store, "--csv",
    )
    assert joined.output.splitlines() == ["name,n,mfcc_dim,dmfcc_dim", "LupusMechanicus,26,140,280"]
    errors = Store.open(game_store).count("ingest_errors")
    assert errors == 0


def test_frames_are_found_by_track_id_with_the_recorded_shapes(game_store):
    from agf.store import FrameCache

    store = Store.open(game_store)
    track_id = store.query("SELECT min(track_id) AS t FROM tracks")["t"][0].as_py()
    logmel = FrameCache(game_store, "logmel").read(track_id)
    mfcc = FrameCache(game_store, "mfcc").read(track_id)
    assert logmel.dtype == np.float16 and logmel.shape == (1 + 30 * 22050 // 512, 128)
    assert mfcc.dtype == np.float16 and mfcc.shape == (1 + 30 * 22050 // 1024, 13)
    assert store.config["frames"]["mfcc"] == {"n_mfcc": 13, "n_mels": 40, "n_fft": 2048, "hop_length": 1024, "dtype": "float16"}


def test_ingesting_again_changes_nothing(small_corpus, tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    candidates, _ = collect(small_corpus.parent, manifest=small_corpus)
    first = ingest(store, candidates, features=("mfcc",), workers=1, quiet=True)
    tables_before = {n: store.query(f"SELECT * FROM {n} ORDER BY ALL").to_pylist() for n in ("tracks", "artists", "features_mfcc")}
    second = ingest(store, candidates, features=("mfcc",), workers=2, quiet=True)
    assert (first.ingested, second.ingested, second.skipped) == (27, 0, 27)
    for name, rows in tables_before.items():
        assert store.query(f"SELECT * FROM {name} ORDER BY ALL").to_pylist() == rows


def test_force_recomputes_in_place(small_corpus, tmp_path):
    store = Store.open(tmp_path / "s", create=True)
    candidates, _ = collect(small_corpus.parent, manifest=small_corpus)
    ingest(store, candidates[:4], features=("mfcc",), workers=1, quiet=True)
    ids = store.query("SELECT track_id, path FROM tracks ORDER BY 1").to_pylist()
    summary = ingest(store, candidates[:4], features=("mfcc",), workers=1, force=True, quiet=True)
    assert summary.ingested == 4
    assert store.query("SELECT track_id, path FROM tracks ORDER BY 1").to_pylist() == ids
    assert store.count("features_mfcc") == 4


def test_an_interrupted_ingest_keeps_its_completed_parts_and_resumes(small_corpus, tmp_path, monkeypatch):
    store = Store.open(tmp_path / "s", create=True)
    candidates, _ = collect(small_corpus.parent, manifest=small_corpus)
    calls = {"n": 0}
    real_write = pipeline.FrameCache.write

    def interrupt_on_the_seventh(self, track_id, frames):
        calls["n"] += 1
        if calls["n"] == 2 * 6 + 1:  # two frame kinds per track: the 7th track
            raise KeyboardInterrupt
        real_write(self, track_id, frames)

    monkeypatch.setattr(pipeline.FrameCache, "write", interrupt_on_the_seventh)
    with pytest.raises(KeyboardInterrupt):
        ingest(store, candidates, features=("mfcc",), workers=1, part_size=3, quiet=True)
    monkeypatch.undo()
    assert store.count("tracks") == 6 and store.count("features_mfcc") == 6
    resumed = ingest(store, candidates, features=("mfcc",), workers=1, quiet=True)
    assert (resumed.skipped, resumed.ingested) == (6, 21)
    assert store.query("SELECT count(DISTINCT track_id) AS n FROM tracks")["n"][0].as_py() == 27


def test_bad_files_become_error_rows_and_the_batch_goes_on(tmp_path, small_corpus):
    folder = tmp_path / "bad"
    folder.mkdir()
    good = sorted(small_corpus.parent.glob("audio/*/*.flac"))[0]
    (folder / "good.flac").write_bytes(good.read_bytes())
    (folder / "empty.mp3").write_bytes(b"")
    (folder / "corrupt.mp3").write_bytes(np.random.default_rng(0).bytes(5000))
    (folder / "truncated.flac").write_bytes(good.read_bytes()[:300])
    (folder / "notes.wav").write_text("this is not audio")
    sf.write(folder / "silence.wav", np.zeros(22050 * 3, dtype=np.float32), 22050)
    with wave.open(str(folder / "two_hours.wav"), "wb") as w:  # long file: only its middle is read
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(1000)
        tone = (np.sin(2 * np.pi * 220 * np.arange(1000) / 1000) * 8000).astype("<i2").tobytes()
        w.writeframes(tone * 7200)
    store = Store.open(tmp_path / "s", create=True)
    candidates, _ = collect(folder)
    summary = ingest(store, candidates, features=("mfcc", "dmfcc"), workers=2, quiet=True)
    assert (summary.ingested, summary.failed) == (2, 5)
    errors = {r["path"].split("/")[-1]: r for r in store.query("SELECT path, stage, error FROM ingest_errors").to_pylist()}
    assert set(errors) == {"empty.mp3", "corrupt.mp3", "truncated.flac", "notes.wav", "silence.wav"}
    assert "silent" in errors["silence.wav"]["error"]
    assert all(e["stage"] == "decode" and "\n" not in e["error"] for e in errors.values())
    # libsndfile says a .mp3 file of other bytes "does not exist": the row says what is wrong
    assert errors["corrupt.mp3"]["error"] == "cannot decode audio: no audio stream libsndfile can decode (not audio, or damaged)"
    assert errors["notes.wav"]["error"] == "cannot decode audio: Format not recognised"
    long = store.query("SELECT duration_s, artist_id FROM tracks WHERE path LIKE '%two_hours.wav'").to_pylist()
    assert long[0]["duration_s"] == pytest.approx(7200.0)
    assert store.query("SELECT name FROM artists").to_pylist() == [{"name": "unknown"}]


def test_a_small_file_that_would_decode_past_7_1_channels_is_refused_before_it_is(tmp_path):
    """Ogg allows 255 channels and compresses silence to almost nothing: 12 channels, 3 s, 4 KB."""
    sf.write(tmp_path / "wide.ogg", np.zeros((48000 * 3, 12), np.float32), 48000, format="OGG", subtype="VORBIS")
    assert (tmp_path / "wide.ogg").stat().st_size < 20_000
    with pytest.raises(AudioError, match="an audio stream of 12 channels at 48000 Hz is not one agf reads"):
        decode_clip(tmp_path / "wide.ogg", 30.0)


@pytest.mark.parametrize("command", ["ingest", "tag"])
def test_a_folder_without_audio_is_one_line_of_error_and_makes_no_store(tmp_path, cli, command):
    (tmp_path / "photos" / ".hidden").mkdir(parents=True)
    (tmp_path / "photos" / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "photos" / ".hidden" / "song.mp3").write_bytes(b"ID3")
    out = cli(command, tmp_path / "photos", "--store", tmp_path / "store")
    assert out.exit_code == 1 and out.output.strip().splitlines() == [
        f"Error: no audio files under {tmp_path / 'photos'}: agf reads .aac .aif .aiff .flac .m4a .mka .mp3 .mpc "
        ".oga .ogg .opus .wav .webm .wma .wv files (hidden ones are passed over)"]
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("command", ["ingest", "tag"])
def test_files_in_formats_agf_does_not_read_are_named_not_passed_over_in_silence(tmp_path, cli, command):
    """A lossless library in Monkey's Audio, say: a run that ingested nothing of it says why."""
    (tmp_path / "music" / ".hidden").mkdir(parents=True)
    for name in ("a.ape", "b.APE", "c.dsf", ".hidden/d.ape", "cover.jpg", "album.cue"):
        (tmp_path / "music" / name).write_bytes(b"not read")
    out = cli(command, tmp_path / "music", "--store", tmp_path / "store")
    assert out.exit_code == 1 and out.output.strip().splitlines() == [
        f"Error: no audio files under {tmp_path / 'music'}: agf reads .aac .aif .aiff .flac .m4a .mka .mp3 .mpc "
        ".oga .ogg .opus .wav .webm .wma .wv files (hidden ones are passed over); passed over 3 files in formats "
        "agf does not read: 2 .ape, 1 .dsf"]


def test_an_ingest_beside_such_files_names_them_on_stderr_and_in_its_summary(tmp_path, cli, small_corpus):
    (tmp_path / "music").mkdir()
    (tmp_path / "music" / "song.flac").write_bytes(sorted(small_corpus.parent.glob("audio/*/*.flac"))[0].read_bytes())
    (tmp_path / "music" / "song.ape").write_bytes(b"MAC ")
    out = cli("ingest", tmp_path / "music", "--features", "mfcc", "--json", "--store", tmp_path / "store")
    note = f"{tmp_path / 'music'}: passed over 1 file in formats agf does not read: 1 .ape"
    assert out.exit_code == 0 and note in out.stderr.splitlines()
    summary = json.loads(out.stdout)
    assert (summary["ingested"], summary["notes"]) == (1, [note])


def test_a_folder_scan_passes_over_hidden_files_and_folders(tmp_path, small_corpus):
    song = sorted(small_corpus.parent.glob("audio/*/*.flac"))[0].read_bytes()
    (tmp_path / "music" / ".Trash").mkdir(parents=True)
    (tmp_path / "music" / "song.flac").write_bytes(song)
    (tmp_path / "music" / "._song.flac").write_bytes(b"\x00\x05\x16\x07" + bytes(4000))  # macOS's resource data
    (tmp_path / "music" / ".Trash" / "old.flac").write_bytes(song)
    candidates, _ = collect(tmp_path / "music")
    assert [c.source_id for c in candidates] == ["song.flac"]


def test_a_folder_scan_follows_linked_folders_once_and_never_loops(tmp_path, small_corpus):
    songs = sorted(small_corpus.parent.glob("audio/*/*.flac"))
    (tmp_path / "music" / "a").mkdir(parents=True)
    (tmp_path / "elsewhere" / "b").mkdir(parents=True)
    (tmp_path / "music" / "a" / "one.flac").write_bytes(songs[0].read_bytes())
    (tmp_path / "elsewhere" / "b" / "two.flac").write_bytes(songs[1].read_bytes())
    (tmp_path / "music" / "linked").symlink_to(tmp_path / "elsewhere" / "b")  # a library spread over disks
    (tmp_path / "music" / "a" / "up").symlink_to(tmp_path / "music")  # a loop
    (tmp_path / "music" / "gone.flac").symlink_to(tmp_path / "nowhere.flac")
    candidates, _ = collect(tmp_path / "music")
    assert [c.source_id for c in candidates] == ["a/one.flac", "linked/two.flac"]


@pytest.mark.parametrize("kind", ["MP3", "FLAC"])
def test_a_download_cut_short_is_ingested_from_the_audio_it_holds(tmp_path, kind):
    """Its header promises 40 s; its middle by that lies past its end, where nothing can be read."""
    whole, cut = tmp_path / f"whole.{kind.lower()}", tmp_path / "cut" / f"cut.{kind.lower()}"
    y = np.random.default_rng(0).uniform(-0.5, 0.5, 40 * 22050).astype(np.float32)
    sf.write(whole, y, 22050, format=kind)
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[: int(0.4 * whole.stat().st_size)])
    notes = []
    clip, rate, held_s = decode_clip(cut, 10.0, notes=notes)
    assert 10 < held_s < 20 and len(clip) == 10 * rate
    with sf.SoundFile(whole) as fh:  # the middle of what it holds, as the whole file gives it
        fh.seek((round(held_s * rate) - len(clip)) // 2)
        assert np.array_equal(clip, fh.read(len(clip), dtype="float32"))
    assert notes == [f"the file decodes to {held_s:.1f} s of audio where its header says 40.0 s: cut short, or damaged?"]
    store = Store.open(tmp_path / "s", create=True)
    summary = ingest(store, collect(cut.parent)[0], features=("mfcc",), workers=1, quiet=True)
    assert (summary.ingested, summary.warned) == (1, 1)
    assert store.query("SELECT duration_s FROM tracks")["duration_s"][0].as_py() == pytest.approx(held_s)
    assert store.query("SELECT error FROM ingest_errors")["error"][0].as_py().startswith(notes[0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 12345, -1])
def test_a_clip_with_one_non_finite_sample_anywhere_is_refused(tmp_path, bad, where):
    y = (0.3 * np.sin(np.arange(22050) / 7)).astype(np.float32)
    y[where] = bad
    sf.write(tmp_path / "bad.wav", y, 22050, subtype="FLOAT")
    with pytest.raises(AudioError, match="non-finite samples"):
        decode_clip(tmp_path / "bad.wav", 30.0)


@pytest.mark.parametrize(("peak", "silent"), [(-0.5, False), (0.5, False), (-5e-5, True), (5e-5, True)])
def test_a_clip_is_silent_by_its_largest_magnitude_whatever_its_sign(tmp_path, peak, silent):
    y = np.zeros(22050, np.float32)
    y[100] = peak
    sf.write(tmp_path / "quiet.wav", y, 22050, subtype="FLOAT")
    if silent:
        with pytest.raises(AudioError, match="silent"):
            decode_clip(tmp_path / "quiet.wav", 30.0)
    else:
        assert decode_clip(tmp_path / "quiet.wav", 30.0)[0][100] == peak


def test_a_manifest_pointing_at_missing_files_records_them(tmp_path, small_corpus, cli):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,who\nmissing.mp3,Nobody\n" + "".join(
        f"{p},Somebody\n" for p in sorted(small_corpus.parent.glob("audio/*/*.flac"))[:2]))
    out = cli("ingest", tmp_path, "--manifest", manifest, "--map", "file=path", "--map", "who=artist",
              "--features", "mfcc", "--store", tmp_path / "s", "--workers", "1", "--json", "--quiet")
    assert out.exit_code == 0, out.output
    store = Store.open(tmp_path / "s")
    assert store.query("SELECT stage, error FROM ingest_errors").to_pylist() == [
        {"stage": "read", "error": "cannot read file: No such file or directory"}]
    assert store.query("SELECT name FROM artists").to_pylist() == [{"name": "Somebody"}]


def test_a_manifest_without_a_path_column_is_a_one_line_error(tmp_path, cli):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,artist\na.mp3,X\n")
    out = cli("ingest", tmp_path, "--manifest", manifest, "--store", tmp_path / "s")
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == [f"Error: manifest {manifest} has no 'path' column (use --map COLUMN=path)"]


def test_the_fma_layout_ingests_with_its_genre_tree(tmp_path, cli):
    meta, audio = write_fma(tmp_path)
    out = cli("ingest", audio, "--fma-metadata", meta, "--features", "mfcc", "--store", tmp_path / "s", "--quiet", "--json")
    assert out.exit_code == 0, out.output
    store = Store.open(tmp_path / "s")
    rows = store.query(
        "SELECT t.source_id, a.name, al.title AS album, t.genre_top, t.genres, t.genres_all, t.tags, t.split, t.subset "
        "FROM tracks t JOIN artists a USING (artist_id) JOIN albums al USING (album_id) ORDER BY t.source_id::INT"
    ).to_pylist()
    assert [r["source_id"] for r in rows] == ["2", "3", "1005", "1006"]  # 2000 has no audio here
    assert rows[0] == {"source_id": "2", "name": "AWOL", "album": "AWOL - A Way Of Life", "genre_top": "Rock",
                       "genres": [25], "genres_all": [12, 25], "tags": ["lo-fi", "garage"], "split": "training", "subset": "small"}
    assert store.query("SELECT genre_id, title, parent_id, top_level FROM genres ORDER BY 1").to_pylist() == [
        {"genre_id": 12, "title": "Rock", "parent_id": None, "top_level": 12},
        {"genre_id": 15, "title": "Electronic", "parent_id": None, "top_level": 15},
        {"genre_id": 25, "title": "Punk", "parent_id": 12, "top_level": 12},
        {"genre_id": 236, "title": "Techno", "parent_id": 15, "top_level": 15},
    ]
    small = cli("ingest", audio, "--fma-metadata", meta, "--subset", "small", "--features", "mfcc", "--store", tmp_path / "s2", "--quiet")
    assert small.exit_code == 0 and Store.open(tmp_path / "s2").count("tracks") == 3


def test_fma_as_distributed_brings_its_released_features_and_its_tracks_without_audio(tmp_path, cli):
    meta, audio = write_fma(tmp_path, released=True)
    root = tmp_path / "s"
    out = cli("ingest", audio, "--fma-metadata", meta, "--store", root, "--json", "--quiet")  # features: mfcc, dmfcc
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) | {"seconds": 0, "files_per_second": 0} == {
        "ingested": 4, "skipped": 0, "failed": 0, "listed": 1, "decoder_warnings": 0, "seconds": 0, "files_per_second": 0,
        "notes": []}
    store = Store.open(root)
    tracks = {r["source_id"]: r for r in store.query("SELECT * FROM tracks").to_pylist()}
    assert sorted(tracks, key=int) == ["2", "3", "1005", "1006", "2000"]
    absent = tracks["2000"]  # listed from the metadata, flagged by having no audio
    assert absent["path"] is None and absent["audio_sha256"] is None and absent["duration_s"] == 30
    fma = {r["track_id"]: r["vector"] for r in store.query("SELECT track_id, vector FROM features_fma").to_pylist()}
    for source_id, row in tracks.items():  # FMA's released values, not recomputed (no fma was asked for)
        np.testing.assert_allclose(fma[row["track_id"]], released_features(int(source_id)), rtol=1e-6)
    echonest = {r["track_id"]: r["vector"] for r in store.query("SELECT track_id, vector FROM features_echonest").to_pylist()}
    assert {tid: [round(v, 3) for v in vector] for tid, vector in echonest.items()} == {
        tracks["2"]["track_id"]: [0.41, 165.9, 0.39, 0.877, 0.588], tracks["1005"]["track_id"]: [0.01, 122.0, 0.51, 0.1, -0.2]}
    assert [t["track_id"] for t in all_tracks(store)] == sorted(r["track_id"] for s, r in tracks.items() if s != "2000")
    again = json.loads(cli("ingest", audio, "--fma-metadata", meta, "--store", root, "--json", "--quiet").stdout)
    assert (again["skipped"], again["ingested"], again["listed"]) == (5, 0, 0)
    write_audio(audio, 2000)  # its audio arrives: the same track gains it
    later = json.loads(cli("ingest", audio, "--fma-metadata", meta, "--store", root, "--json", "--quiet").stdout)
    assert later["ingested"] == 1
    now = store.query("SELECT track_id, audio_sha256 FROM tracks WHERE source_id = '2000'").to_pylist()
    assert len(now) == 1 and now[0]["track_id"] == absent["track_id"] and now[0]["audio_sha256"]
    assert store.query("SELECT count(*) AS n FROM features_fma")["n"][0].as_py() == 5


def test_fma_at_each_files_own_rate_is_what_fmas_features_py_gives_that_file(tmp_path, cli):
    from agf.ingest.features import fma_features_reference

    meta, audio = write_fma(tmp_path, rate=44100)
    expected = {}  # what FMA's features.py computes: the file decoded at its own rate, mono
    for path in sorted(audio.rglob("*.mp3")):
        y, rate = sf.read(path, dtype="float32", always_2d=True)
        assert rate == 44100
        expected[str(int(path.stem))] = fma_features_reference(y.mean(axis=1), rate)
    for fma_rate in ("native", "store"):
        root = tmp_path / fma_rate
        out = cli("ingest", audio, "--fma-metadata", meta, "--features", "fma", "--fma-rate", fma_rate, "--store", root,
                  "--quiet")
        assert out.exit_code == 0, out.output
        got = {r["source_id"]: r["vector"] for r in Store.open(root).query(
            "SELECT source_id, vector FROM tracks JOIN features_fma USING (track_id)").to_pylist()}
        assert sorted(got) == sorted(expected)
        same = [np.allclose(got[t], expected[t], rtol=1e-5, atol=1e-5) for t in expected]
        assert all(same) if fma_rate == "native" else not any(same)  # at 22,050 Hz they are other numbers


def test_fma_metadata_missing_a_required_column_is_refused(tmp_path, cli):
    meta, audio = write_fma(tmp_path, drop_column=("artist", "id"))
    out = cli("ingest", audio, "--fma-metadata", meta, "--store", tmp_path / "s")
    assert out.exit_code == 1
    assert out.output.strip() == "Error: tracks.csv lacks required column(s) artist.id"


def test_a_bare_folder_reads_the_files_own_tags(tmp_path, small_corpus):
    import mutagen.flac

    folder = tmp_path / "tagged"
    folder.mkdir()
    source = sorted(small_corpus.parent.glob("audio/*/*.flac"))[0]
    target = folder / "song.flac"
    target.write_bytes(source.read_bytes())
    tags = mutagen.flac.FLAC(target)
    tags["artist"], tags["title"], tags["genre"], tags["album"] = "Björk Guðmundsdóttir", "Jóga", "Pop", "Homogenic"
    tags.save()
    store = Store.open(tmp_path / "s", create=True)
    candidates, _ = collect(folder)
    ingest(store, candidates, features=("mfcc",), workers=1, quiet=True)
    row = store.query("SELECT t.title, a.name, t.genre_top, g.title AS genre FROM tracks t JOIN artists a USING (artist_id) "
                      "JOIN genres g ON g.genre_id = t.genres[1]").to_pylist()
    assert row == [{"title": "Jóga", "name": "Björk Guðmundsdóttir", "genre_top": "Pop", "genre": "Pop"}]


def test_unknown_feature_sets_are_refused(tmp_path, cli):
    out = cli("ingest", tmp_path, "--features", "mfcc,loudness", "--store", tmp_path / "s")
    assert out.exit_code == 1 and "unknown feature set(s) ['loudness']" in out.output


def test_a_missing_audio_folder_is_refused():
    with pytest.raises(AgfError, match="does not exist"):
        collect("/nonexistent/audio")


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGKILL"])
def test_ctrl_c_or_a_kill_mid_ingest_loses_nothing_stored_and_the_next_run_resumes(small_corpus, tmp_path, signal_name):
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "s"
    command = [sys.executable, "-m", "agf.cli", "ingest", str(small_corpus.parent), "--manifest", str(small_corpus),
               "--features", "mfcc", "--workers", "1", "--part-size", "2", "--store", str(root), "--quiet"]
    # A shell runs background jobs with SIGINT ignored, and Python then keeps it ignored: restore it.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and len(list((root / "tables" / "tracks").glob("*.parquet"))) < 3:
        time.sleep(0.05)  # wait for two committed parts (the first part is the empty table)
    process.send_signal(getattr(signal, signal_name))
    _, err = process.communicate(timeout=60)
    if signal_name == "SIGINT":
        assert process.returncode == 130 and "interrupted" in err and "Traceback" not in err
    else:
        assert process.returncode == -signal.SIGKILL
    store = Store.open(root, write=True)  # finishes or discards the transaction in flight
    stored = store.count("tracks")
    assert 4 <= stored < 27 and store.count("features_mfcc") == stored
    assert not list(root.glob("tables/*/.*.tmp")) and not list(root.glob("journal/*"))
    store.close()
    resumed = subprocess.run(command[:-1] + ["--json"], capture_output=True, text=True, check=True)
    assert '"skipped": %d' % stored in resumed.stdout and '"ingested": %d' % (27 - stored) in resumed.stdout
    assert Store.open(root).count("tracks") == 27


def test_every_supported_format_at_any_rate_mono_or_stereo_is_resampled_once(tmp_path):
    t = np.arange(int(3.0 * 48000)) / 48000
    tone = (0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * np.sin(2 * np.pi * 1200 * t)).astype(np.float32)
    cases = {
        "a.wav": (8000, 1, {}), "b.flac": (44100, 2, {}), "c.ogg": (32000, 2, {"subtype": "VORBIS"}),
        "d.opus": (48000, 1, {"format": "OGG", "subtype": "OPUS"}), "e.mp3": (44100, 2, {"format": "MP3"}),
    }
    for name, (rate, channels, kwargs) in cases.items():
        y = tone[:: max(1, 48000 // rate)][: 3 * rate]
        sf.write(tmp_path / name, np.stack([y] * channels, axis=1) if channels == 2 else y, rate, **kwargs)
    store = Store.open(tmp_path / "s", create=True)
    candidates, _ = collect(tmp_path)
    summary = ingest(store, candidates, features=("mfcc",), workers=1, quiet=True)
    assert (summary.ingested, summary.failed) == (5, 0), store.query("SELECT * FROM ingest_errors").to_pylist()
    rates = {r["path"].split("/")[-1]: r["sample_rate"] for r in store.query("SELECT path, sample_rate FROM tracks").to_pylist()}
    assert rates == {name: rate for name, (rate, _, _) in cases.items()}
    from agf.store import FrameCache

    frames = FrameCache(store.root, "logmel")
    lengths = [frames.read(t).shape[0] for t in store.query("SELECT track_id FROM tracks")["track_id"].to_pylist()]
    assert all(abs(n - (1 + 3 * 22050 // 512)) <= 3 for n in lengths), lengths  # ~3 s at 22,050 Hz, whatever the source


def test_metadata_that_is_not_utf8_is_read_not_fatal(tmp_path, small_corpus):
    from mutagen.id3 import ID3, TPE1, TIT2, Encoding

    audio = sorted(small_corpus.parent.glob("audio/*/*.flac"))[0]
    y, rate = sf.read(audio)
    sf.write(tmp_path / "latin.mp3", y, rate, format="MP3")
    tags = ID3()
    tags.add(TPE1(encoding=Encoding.LATIN1, text="Bj\xf6rk"))
    tags.add(TIT2(encoding=Encoding.LATIN1, text="J\xf3ga"))
    tags.save(tmp_path / "latin.mp3")
    (tmp_path / "manifest.csv").write_bytes("path,artist,title\nlatin.mp3,Sigur R\xf3s,Hopp\xedpolla\n".encode("latin-1"))
    store = Store.open(tmp_path / "s", create=True)
    ingest(store, collect(tmp_path, manifest=tmp_path / "manifest.csv")[0], features=("mfcc",), workers=1, quiet=True)
    ingest(store, collect(tmp_path)[0], features=("mfcc",), workers=1, force=True, quiet=True)
    names = store.query("SELECT name FROM artists ORDER BY artist_id")["name"].to_pylist()
    assert names == ["Sigur R\ufffds", "Bj\xf6rk"]  # bad UTF-8 becomes U+FFFD; Latin-1 ID3 tags decode
    assert store.query("SELECT t.title, a.name FROM tracks t JOIN artists a USING (artist_id)").to_pylist() == [
        {"title": "J\xf3ga", "name": "Bj\xf6rk"}]


def test_the_parent_warms_the_feature_code_once_before_workers_fork(monkeypatch):
    calls = []
    monkeypatch.setattr(pipeline, "_WARM", set())
    monkeypatch.setattr(pipeline, "_features", lambda spectra, config: calls.append(config.features))
    config = pipeline.ExtractConfig.of(DEFAULT_CONFIG, ("mfcc", "essentia"))
    pipeline.warm_up(config)
    pipeline.warm_up(config)
    assert calls == [("mfcc",)]  # once per process; essentia decodes files itself and is not warmed

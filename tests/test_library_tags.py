"""Tagging a real library: genres into the files' own tags with undo, the user's vocabulary,
playlists, and a real beets library.

The files are game-music clips converted to MP3, FLAC, Ogg Vorbis, Opus and, where ffmpeg is
there to encode and decode them, M4A (AAC), WavPack, WMA, raw AAC (ADTS) and, where mpcenc is
there too, Musepack; the model is the trained store's.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mutagen
import mutagen.easyid3
import mutagen.id3
import numpy as np
import pytest
import soundfile as sf

from agf.store import Store

FFMPEG, MPCENC = shutil.which("ffmpeg"), shutil.which("mpcenc")
DECODES = FFMPEG and shutil.which("ffprobe")
#: Extension -> (libsndfile's format and subtype) or (the encoder's command, its codec) for what libsndfile cannot write.
FORMATS = {"mp3": ("MP3", None), "flac": ("FLAC", None), "ogg": ("OGG", "VORBIS"), "opus": ("OGG", "OPUS"),
           **({"m4a": ("ffmpeg", "aac"), "wv": ("ffmpeg", "wavpack"), "wma": ("ffmpeg", "wmav2"), "aac": ("ffmpeg", "aac")}
              if DECODES else {}),
           **({"mpc": ("mpcenc", None)} if DECODES and MPCENC else {})}
#: The genre field by extension where mutagen has no "easy" name for it.
NAMED_FIELDS = {"wv": "Genre", "wma": "WM/Genre", "mpc": "Genre"}
AGF = [sys.executable, "-m", "agf.cli"]


def _decoded(path: Path) -> np.ndarray:
    """The file's samples as its decoder gives them (ffmpeg for what libsndfile cannot read)."""
    if FORMATS[path.suffix[1:]][0] in ("ffmpeg", "mpcenc"):
        raw = subprocess.run([FFMPEG, "-v", "error", "-i", str(path), "-f", "f32le", "-"], capture_output=True, check=True)
        return np.frombuffer(raw.stdout, np.float32)
    return sf.read(path, dtype="float32")[0]


def _library(folder: Path, clips: list[Path], with_genre: dict[str, list[str]] | None = None) -> dict[str, Path]:
    """One clip per format under ``folder``; ``with_genre`` gives some files a genre tag first."""
    folder.mkdir(parents=True)
    files = {}
    for (ext, (fmt, subtype)), clip in zip(FORMATS.items(), clips):
        y, rate = sf.read(clip, frames=22050 * 8, dtype="float32", always_2d=True)
        files[ext] = folder / f"{clip.stem}.{ext}"
        if fmt == "ffmpeg":
            subprocess.run([FFMPEG, "-v", "error", "-f", "f32le", "-ar", str(rate), "-ac", str(y.shape[1]), "-i", "pipe:0",
                            "-c:a", subtype, str(files[ext])], input=y.astype("<f4").tobytes(), check=True)
        elif fmt == "mpcenc":  # which reads WAV files
            sf.write(folder / "input.wav", y, rate, subtype="PCM_16")
            subprocess.run([MPCENC, "--silent", str(folder / "input.wav"), str(files[ext])], check=True)
            (folder / "input.wav").unlink()
        else:
            sf.write(files[ext], y, 48000 if ext == "opus" else rate, format=fmt, subtype=subtype)
    for ext, genres in (with_genre or {}).items():
        audio = mutagen.File(files[ext], easy=True)
        if audio.tags is None:
            audio.add_tags()
        audio.tags[NAMED_FIELDS.get(ext, "genre")] = genres
        audio.save()
    return files


def _genres(path: Path):
    tags, key = _mutagen_tags(path, easy=True), NAMED_FIELDS.get(path.suffix[1:], "genre")
    return None if tags is None or key not in tags else [str(v) for v in tags[key]]


def _tags(path: Path) -> dict | None:
    tags = _mutagen_tags(path, easy=False)
    return None if tags is None else {k: str(v) for k, v in tags.items()}


def _mutagen_tags(path: Path, *, easy: bool):
    """The file's tags as mutagen reads them; a raw AAC file's are its ID3v2 tag, read as such
    (mutagen.File takes a tagged one for an MP3)."""
    if path.suffix != ".aac":
        return mutagen.File(path, easy=easy).tags
    try:
        return (mutagen.easyid3.EasyID3 if easy else mutagen.id3.ID3)(path)
    except mutagen.id3.ID3NoHeaderError:
        return None


def _agf(*args, store: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([*AGF, *map(str, args), "--store", str(store)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def tagged(searchable_trained, game_music, tmp_path_factory):
    """A library written in every format, some files with a genre of their own, tagged once with
    --write-tags (two genres at most, any probability): what it held before, and the run's rows."""
    root = tmp_path_factory.mktemp("library")
    shutil.copytree(searchable_trained / "store", root / "store")
    clips = sorted((game_music / "clips").rglob("*.mp3"))[:len(FORMATS)]
    files = _library(root / "music", clips, with_genre={"flac": ["Chiptune"], "mp3": ["Soundtrack", "Game"]})
    before = {ext: {"bytes": f.read_bytes(), "audio": _decoded(f), "tags": _tags(f), "genres": _genres(f)}
              for ext, f in files.items()}
    rows = json.loads(_agf("tag", root / "music", "--write-tags", "--min-probability", "0", "--top", "2", "--json",
                           store=root / "store").stdout)
    return {"root": root, "store": root / "store", "files": files, "before": before,
            "rows": {Path(r["path"]).suffix[1:]: r for r in rows}}


@pytest.mark.parametrize("ext", FORMATS)
def test_write_tags_puts_the_top_genres_in_the_file_and_never_touches_the_audio(tagged, ext):
    path, row = tagged["files"][ext], tagged["rows"][ext]
    with Store.open(tagged["store"]) as store:
        ranked = store.query("SELECT genre FROM predictions WHERE track_id = ? ORDER BY predicted_at DESC, rank LIMIT 2",
                             [row["track_id"]])["genre"].to_pylist()
    assert _genres(path) == ranked and row["tags"].endswith(" -> " + "; ".join(ranked))
    np.testing.assert_array_equal(_decoded(path), tagged["before"][ext]["audio"])


def test_every_change_is_recorded_before_and_after(tagged):
    with Store.open(tagged["store"]) as store:
        writes = {Path(w["path"]).suffix[1:]: w for w in store.query("SELECT * FROM tag_writes").to_pylist()}
    assert set(writes) == set(tagged["files"])
    assert writes["flac"]["old_value"] == ["Chiptune"] and writes["ogg"]["old_value"] is None
    fields = {"mp3": "TCON", "flac": "GENRE", "ogg": "GENRE", "opus": "GENRE", "m4a": "©gen", "aac": "TCON", **NAMED_FIELDS}
    assert {ext: w["field"] for ext, w in writes.items()} == {ext: fields[ext] for ext in writes}
    for ext, w in writes.items():
        assert w["sha256_before"] != w["sha256_after"] and w["new_value"] == _genres(tagged["files"][ext])


def test_tagging_the_retagged_files_again_finds_the_same_tracks(tagged):
    with Store.open(tagged["store"]) as store:
        tracks = store.count("tracks")
    rows = json.loads(_agf("tag", tagged["root"] / "music", "--json", store=tagged["store"]).stdout)
    assert {r["track_id"] for r in rows} == {r["track_id"] for r in tagged["rows"].values()}
    with Store.open(tagged["store"]) as store:
        assert store.count("tracks") == tracks


def test_a_playlist_of_the_tagged_files_grouped_by_genre(tagged):
    playlist = tagged["root"] / "by-genre.m3u"
    _agf("tag", tagged["root"] / "music", "--m3u", playlist, "--quiet", store=tagged["store"])
    lines = playlist.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#EXTM3U"
    paths = [line for line in lines if not line.startswith("#")]
    assert sorted(paths) == sorted(str(f) for f in tagged["files"].values()) and all(Path(p).exists() for p in paths)
    groups = [line.removeprefix("#EXTGRP:") for line in lines if line.startswith("#EXTGRP:")]
    assert groups == sorted(groups) and len(groups) == len(paths)
    assert all(line.split(",")[0].removeprefix("#EXTINF:").lstrip("-").isdigit() for line in lines if line.startswith("#EXTINF:"))


def test_undo_restores_every_file_exactly_and_a_dry_run_touches_nothing(tagged):
    files = tagged["files"]
    written = {ext: f.read_bytes() for ext, f in files.items()}
    dry = json.loads(_agf("tag", "--undo", "--dry-run", "--json", store=tagged["store"]).stdout)
    assert {r["done"] for r in dry} == {"dry run"} and {ext: f.read_bytes() for ext, f in files.items()} == written
    done = json.loads(_agf("tag", "--undo", "--json", store=tagged["store"]).stdout)
    assert {r["done"] for r in done} == {"restored"} and len(done) == len(files)
    for ext, path in files.items():
        before = tagged["before"][ext]
        assert _tags(path) == before["tags"], ext  # an absent field is removed again; an MP3 without ID3 has none again
        np.testing.assert_array_equal(_decoded(path), before["audio"])
        if ext in ("aac", "wv", "mpc"):  # files without a tag before: the tag agf added goes whole
            assert path.read_bytes() == before["bytes"], ext
    with Store.open(tagged["store"]) as store:
        assert store.count("tag_writes") == 0


def test_dry_run_leaves_every_byte_and_a_genres_map_decides_what_is_written(searchable_trained, game_music, tmp_path):
    shutil.copytree(searchable_trained / "store", tmp_path / "store")
    files = _library(tmp_path / "music", sorted((game_music / "clips").rglob("*.mp3"))[4:8])
    before = {ext: f.read_bytes() for ext, f in files.items()}
    rows = json.loads(_agf("tag", tmp_path / "music", "--write-tags", "--min-probability", "0", "--dry-run", "--json",
                           store=tmp_path / "store").stdout)
    assert all(r["tags"].endswith("(dry run)") for r in rows)
    assert {ext: f.read_bytes() for ext, f in files.items()} == before
    with Store.open(tmp_path / "store") as store:
        classes = json.loads(store.query("SELECT params FROM models WHERE kind = 'transfer'")["params"][0].as_py())["classes"]
    (tmp_path / "map.json").write_text(json.dumps({classes[0]: "Mine"}))
    rows = json.loads(_agf("tag", tmp_path / "music", "--write-tags", "--min-probability", "0", "--genres-map",
                           tmp_path / "map.json", "--top", "3", "--json", store=tmp_path / "store").stdout)
    for row in rows:
        path = Path(row["path"])
        if row["tags"].startswith("left untouched"):
            assert "in the genres map" in row["tags"] and path.read_bytes() == before[path.suffix[1:]]
        else:
            assert _genres(path) == ["Mine"]
    assert any(_genres(f) == ["Mine"] for f in files.values())


def test_a_file_changed_since_agf_wrote_it_is_left_as_it_is_by_undo(searchable_trained, game_music, tmp_path):
    shutil.copytree(searchable_trained / "store", tmp_path / "store")
    files = _library(tmp_path / "music", sorted((game_music / "clips").rglob("*.mp3"))[8:12])
    _agf("tag", tmp_path / "music", "--write-tags", "--min-probability", "0", "--quiet", store=tmp_path / "store")
    mine = mutagen.File(files["flac"], easy=True)
    mine.tags["genre"] = ["Changed by hand"]
    mine.save()
    rows = {Path(r["path"]).suffix[1:]: r for r in json.loads(_agf("tag", "--undo", "--json", store=tmp_path / "store").stdout)}
    assert rows["flac"]["done"].startswith("left as it is") and _genres(files["flac"]) == ["Changed by hand"]
    assert rows["ogg"]["done"] == "restored" and _genres(files["ogg"]) is None


@pytest.mark.parametrize("args, message", [
    (["--write-tags", "--min-probability", "2"], "between 0 and 1"),
    (["--dry-run"], "--dry-run goes with --write-tags or --undo"),
    (["--write-tags", "--genres-map", "/nowhere/map.json"], "cannot read the genres map"),
])
def test_bad_tagging_options_are_one_line(searchable_trained, game_music, cli, args, message):
    out = cli("tag", game_music / "clips", *args, "--store", searchable_trained / "store")
    assert out.exit_code == 1 and message in out.output.strip().splitlines()[-1]


def test_similar_writes_a_playlist_of_the_neighbours_clips(searchable_trained, cli, tmp_path):
    with Store.open(searchable_trained / "store") as store:
        name = store.query("SELECT name FROM artists ORDER BY artist_id LIMIT 1")["name"][0].as_py()
    out = cli("similar", name, "-k", "2", "--m3u", tmp_path / "like.m3u", "--json", "--store", searchable_trained / "store")
    neighbours = json.loads(out.stdout)
    lines = (tmp_path / "like.m3u").read_text(encoding="utf-8").splitlines()
    paths = [line for line in lines if not line.startswith("#")]
    assert lines[0] == "#EXTM3U" and paths and all(Path(p).is_absolute() and Path(p).exists() for p in paths)
    titles = [line.split(",", 1)[1] for line in lines if line.startswith("#EXTINF:")]
    assert {t.split(" - ")[0] for t in titles} == {n["artist"] for n in neighbours}


@pytest.mark.skipif(not shutil.which("beet", path=str(Path(sys.executable).parent)), reason="beets is not installed")
def test_beet_agf_tags_imported_items_in_a_real_beets_library(searchable_trained, game_music, tmp_path):
    shutil.copytree(searchable_trained / "store", tmp_path / "store")
    _library(tmp_path / "incoming", sorted((game_music / "clips").rglob("*.mp3"))[12:16])
    (tmp_path / "beets").mkdir()
    (tmp_path / "beets" / "config.yaml").write_text(
        f"directory: {tmp_path / 'music'}\nlibrary: {tmp_path / 'beets' / 'library.db'}\nplugins: agf\n"
        f"import:\n  write: yes\n  copy: no\n  autotag: no\n  duplicate_action: keep\n"
        f"agf:\n  store: {tmp_path / 'store'}\n  min_probability: 0\n  top: 1\n")
    beet = [str(Path(sys.executable).parent / "beet")]
    env = {**os.environ, "BEETSDIR": str(tmp_path / "beets")}

    def run(*args):
        result = subprocess.run([*beet, *args], capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr
        return result.stdout

    run("import", "-q", "-s", str(tmp_path / "incoming"))
    items = run("ls", "-f", "$path\t$genres").rstrip("\n").splitlines()
    assert len(items) == len(list((tmp_path / "incoming").iterdir())) and all(line.endswith("\t") for line in items)
    run("agf", "^format:opus")  # every item but the Opus one
    listed = dict(line.split("\t") for line in run("ls", "-f", "$path\t$genres").rstrip("\n").splitlines())
    tagged = {path: genres for path, genres in listed.items() if genres}
    assert len(tagged) == len(items) - 1 and not [p for p in tagged if p.endswith(".opus")]
    for path, genres in tagged.items():  # import.write: yes, so the files agree with the library
        assert _genres(Path(path)) == [genres]


def test_undo_restores_a_write_that_was_cut_short_before_its_second_commit(searchable_trained, game_music, tmp_path):
    import pyarrow as pa

    shutil.copytree(searchable_trained / "store", tmp_path / "store")
    files = _library(tmp_path / "music", sorted((game_music / "clips").rglob("*.mp3"))[16:20])
    _agf("tag", tmp_path / "music", "--write-tags", "--min-probability", "0", "--quiet", store=tmp_path / "store")
    with Store.open(tmp_path / "store", write=True) as store:  # as if killed after writing the file: no sha256 after
        rows = store.query("SELECT * FROM tag_writes WHERE path = ?", [str(files["flac"])]).to_pylist()
        with store.transaction() as tx:
            tx.delete_where("tag_writes", "path = ?", [str(files["flac"])])
            tx.append("tag_writes", pa.Table.from_pylist([{**rows[0], "sha256_after": None}]))
    done = {Path(r["path"]).suffix[1:]: r["done"] for r in json.loads(_agf("tag", "--undo", "--json", store=tmp_path / "store").stdout)}
    assert done["flac"] == "restored" and _genres(files["flac"]) is None


def test_undo_leaves_a_path_that_became_a_fifo_as_it_is_instead_of_hanging(searchable_trained, tmp_path):
    import datetime as dt

    import pyarrow as pa

    shutil.copytree(searchable_trained / "store", tmp_path / "store")
    fifo = tmp_path / "song.flac"
    os.mkfifo(fifo)
    with Store.open(tmp_path / "store", write=True) as store, store.transaction() as tx:
        tx.append("tag_writes", pa.Table.from_pylist([{
            "track_id": 1, "path": str(fifo), "field": "GENRE", "old_value": None, "new_value": ["Rock"],
            "sha256_before": "0" * 64, "sha256_after": "1" * 64, "model_id": "m",
            "written_at": dt.datetime.now(dt.timezone.utc)}]))
    (row,) = json.loads(_agf("tag", "--undo", "--json", store=tmp_path / "store").stdout)
    assert row["done"] == f"left as it is: {fifo}: not a regular file"

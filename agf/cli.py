"""The ``agf`` command line: each command opens the store, calls one library function, renders.

Output options (table, ``--json``, ``--csv``) and the turning of library errors into one-line
messages come from one decorator, :func:`command`.
"""

import functools
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from agf.errors import AgfError
from agf.output import render

#: ``agf --help`` lists commands in the order people use them, grouped under these panels.
WORKING_ORDER = ["demo", "ingest", "factors", "train", "embed", "evaluate", "index", "similar", "map", "tag", "serve", "sql",
                 "info", "tables", "check", "compact", "migrate"]


class _InWorkingOrder(typer.core.TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: WORKING_ORDER.index(n) if n in WORKING_ORDER else len(WORKING_ORDER))


app = typer.Typer(
    cls=_InWorkingOrder,
    help="agf: a music feature store and embedding database built around Artist Group Factors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from agf.version import __version__

        typer.echo(f"agf {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                                         help="Print agf's version and exit.")] = None):
    """Start with `agf demo`, or `agf ingest` your own music; learn with `agf factors build`,
    `agf train` and `agf embed`; then use `agf similar`, `agf tag` and `agf sql`."""

StoreDir = Annotated[
    Path,
    typer.Option("--store", envvar="AGF_STORE", help="Store directory (or AGF_STORE).", show_default=True),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
Wait = Annotated[float, typer.Option("--wait", help="Seconds a commit waits for readers of the store before giving up.")]
DEFAULT_STORE = Path("agf-store")
EngineName = Annotated[str, typer.Option("--engine", help="local (this machine's cores) or ray (a Ray cluster; the ray extra).")]
Address = Annotated[str | None, typer.Option(envvar="RAY_ADDRESS", help="Ray cluster address (or RAY_ADDRESS); default: a local one.")]


def _engine(name: str, address: str | None):
    from agf.engine import Engine

    return Engine(name, address)


def fail(message: str, code: int = 1):
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


class FailedWith(AgfError):
    """A command's rows that still deserve printing (what ``agf check`` found), then its error."""

    def __init__(self, message: str, rows: list[dict]):
        super().__init__(message)
        self.rows = rows


def command(fn):
    """Give a command ``--json`` and ``--csv``, render what it returns, and turn an
    :class:`AgfError` into ``Error: message`` on stderr with exit status 1.

    A command may return an iterator of rows, rendered as they come; errors raised while it
    runs are reported the same way."""

    @functools.wraps(fn)
    def wrapper(*args, as_json: bool = False, as_csv: bool = False, **kwargs):
        fmt = "json" if as_json else "csv" if as_csv else "table"
        try:
            render(fn(*args, **kwargs), fmt)
        except FailedWith as exc:
            render(exc.rows, fmt)
            fail(str(exc))
        except AgfError as exc:
            fail(str(exc))
        except BrokenPipeError:  # the reader went away (`agf tag ... --csv | head`): stop, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit cannot fail
            raise typer.Exit(1) from None
        except OSError as exc:  # a full disk, an unwritable store: the store keeps its last commit
            where = f" ({exc.filename})" if exc.filename else ""
            fail(f"cannot write or read the store: {exc.strerror or exc}{where} (is the disk full, or the store "
                 f"read-only?); nothing half-written was kept")
        except KeyboardInterrupt:
            fail("interrupted: the store keeps every completed part; run the command again to resume", 130)

    signature = inspect.signature(fn)
    extra = [
        inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False,
                          annotation=Annotated[bool, typer.Option("--json", help="Output JSON.")]),
        inspect.Parameter("as_csv", inspect.Parameter.KEYWORD_ONLY, default=False,
                          annotation=Annotated[bool, typer.Option("--csv", help="Output CSV.")]),
    ]
    wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])
    wrapper.__doc__ = _paragraphs_unwrapped(fn.__doc__)
    return wrapper


def _paragraphs_unwrapped(doc: str | None) -> str | None:
    """``doc`` with each paragraph on one line: Typer keeps a docstring's line breaks, and the
    terminal's wrapping around them then breaks lines mid-sentence."""
    if doc is None:
        return None
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in inspect.cleandoc(doc).split("\n\n"))


def _open(store: Path, write: bool = False, create: bool = False, **config):
    from agf.store import Store

    return Store.open(store, write=write, create=create, **config)


# -- SQL and the catalog ------------------------------------------------------------------------


@app.command(rich_help_panel="Use")
@command
def sql(query: Annotated[str, typer.Argument(help="A read-only SQL statement over the store's views.")],
        timeout: Annotated[float | None, typer.Option(help="Interrupt the query after this many seconds.")] = None,
        store: StoreDir = DEFAULT_STORE):
    """Run a read-only SQL query over the store's tables (DuckDB), which can read no other file.

    Example: agf sql "select genre_top, count(*) from tracks group by 1" --json --timeout 10
    """
    if timeout is not None and timeout <= 0:
        raise AgfError("--timeout must be a positive number of seconds")
    return _open(store).sql(query, timeout=timeout)


@app.command(rich_help_panel="Look after")
@command
def info(store: StoreDir = DEFAULT_STORE):
    """Show the store's path, format version, tables, frame caches, indexes and models.

    Example: agf info --store ./agf-store
    """
    details = _open(store).info()
    return details


@app.command(rich_help_panel="Look after")
@command
def tables(store: StoreDir = DEFAULT_STORE):
    """List the store's tables with rows, parts and bytes.

    Example: agf tables --csv
    """
    return _open(store).info()["tables"]


@app.command(rich_help_panel="Look after")
@command
def compact(store: StoreDir = DEFAULT_STORE,
            wait: Wait = 60.0,
            table: Annotated[list[str] | None, typer.Option("--table", help="Only these tables.")] = None):
    """Merge each table's Parquet parts into one; the rows stay identical.

    Example: agf compact --table tracks
    """
    with _open(store, write=True, wait=wait) as opened:
        done = opened.compact(table or None)
    return [{"table": t, "parts_before": a, "parts_after": b} for t, (a, b) in done.items()]


@app.command(rich_help_panel="Look after")
@command
def check(repair: Annotated[bool, typer.Option(help="Move damaged files to quarantine/ and say what rebuilds them.")] = False,
          store: StoreDir = DEFAULT_STORE,
          wait: Wait = 60.0,
          quiet: Quiet = False):
    """Verify every table part, frame file, index and model file against the store's records.

    Exits non-zero when anything is damaged, naming each file and the command that rebuilds it.

    Example: agf check --repair
    """
    from agf.progress import say
    from agf.store.check import check_store

    with _open(store, write=repair, wait=wait) as opened:
        findings, checked = check_store(opened, repair=repair)
    counts = ", ".join(f"{n} {kind}" for kind, n in checked.items()) or "nothing"
    if findings:
        fix = "" if repair else "; agf check --repair sets them aside"
        raise FailedWith(f"{len(findings)} damaged of {counts} checked{fix}", findings)
    say(f"no damage found in {counts}", quiet)
    return findings


# -- ingest -------------------------------------------------------------------------------------


def _mapping(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        column, sep, target = pair.partition("=")
        if not sep or not column or not target:
            raise AgfError(f"--map expects COLUMN=FIELD, got {pair!r}")
        out[column] = target
    return out


@app.command(rich_help_panel="Start")
@command
def ingest(
    audio_dir: Annotated[Path, typer.Argument(help="Folder of audio files (FMA's fma_<size>/ for --fma-metadata).")],
    manifest: Annotated[Path | None, typer.Option(help="CSV with a path column and any of artist, album, title, genre, tags.")] = None,
    fma_metadata: Annotated[Path | None, typer.Option("--fma-metadata", help="FMA's fma_metadata/ folder (tracks.csv, genres.csv).")] = None,
    map_: Annotated[list[str] | None, typer.Option("--map", help="Manifest COLUMN=FIELD renames, repeatable.")] = None,
    subset: Annotated[str | None, typer.Option(help="FMA subset to keep: small, medium or large.")] = None,
    features: Annotated[str | None, typer.Option(help="Feature sets, comma-separated: mfcc,dmfcc,fma,essentia.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: every core this process may use).")] = None,
    force: Annotated[bool, typer.Option(help="Recompute files whose audio is already stored.")] = False,
    part_size: Annotated[int, typer.Option(help="Files per committed part: an interruption loses at most one part.")] = 64,
    file_timeout: Annotated[float, typer.Option(help="Seconds one file may take to decode and featurise before it becomes an error row (0: no limit).")] = 300.0,
    sample_rate: Annotated[int, typer.Option(help="Sample rate of a new store, Hz.")] = 22050,
    clip_seconds: Annotated[float, typer.Option(help="Longest clip kept per file (from its middle), s; for a new store.")] = 30.0,
    fma_rate: Annotated[str, typer.Option(help="The fma feature set at the store's rate ('store') or each file's own ('native', as FMA's released features.csv); for a new store.")] = "store",
    engine: EngineName = "local",
    address: Address = None,
    store: StoreDir = DEFAULT_STORE,
    wait: Wait = 60.0,
    quiet: Quiet = False,
):
    """Ingest audio and metadata: tracks, artists, genres, feature sets and frame matrices.

    Files already stored (same audio sha256) are skipped; bad files become ingest_errors rows.

    Example: agf ingest --manifest ../shared/data/game-music/manifest.csv ../shared/data/game-music
    """
    from agf.ingest import collect, ingest as run_ingest
    from agf.ingest.features import parse_features
    from agf.progress import say

    chosen, where, notes = parse_features(features), _engine(engine, address), []
    candidates, genre_tree = collect(audio_dir, manifest=manifest, fma_metadata=fma_metadata,
                                     mapping=_mapping(map_ or []), subset=subset, notes=notes)
    for note in notes:
        say(note, quiet)
    if fma_rate not in ("store", "native"):
        raise AgfError(f"--fma-rate is 'store' or 'native', not {fma_rate!r}")
    with _open(store, write=True, create=True, wait=wait, sample_rate=sample_rate, clip_seconds=clip_seconds,
               fma_rate=fma_rate) as opened:
        summary = run_ingest(opened, candidates, genre_tree, features=chosen, workers=workers, force=force,
                                  part_size=part_size, engine=where, quiet=quiet, file_seconds=file_timeout)
    warned = f" ({summary.warned} with decoder warnings: see ingest_errors)" if summary.warned else ""
    say(f"ingested {summary.ingested}{warned}, skipped {summary.skipped}, failed {summary.failed} "
        f"in {summary.seconds:.1f} s ({summary.files_per_second:.1f} files/s)", quiet)
    return {**summary.as_dict(), "notes": notes}


@app.command(rich_help_panel="Look after")
@command
def migrate(store: StoreDir = DEFAULT_STORE):
    """Upgrade a store written by an older agf to this version's format, in place.

    Pickled factor models become array files. Do not migrate a store of unknown origin.

    Example: agf migrate --store ./agf-store
    """
    from agf.store.migrations import migrate as run_migrate

    return run_migrate(store)


# -- factors ------------------------------------------------------------------------------------

factors_app = typer.Typer(help="Artist Group Factors: build, update, show.", no_args_is_help=True)
app.add_typer(factors_app, name="factors", rich_help_panel="Learn")


@factors_app.command("build")
@command
def factors_build(
    source: Annotated[str | None, typer.Option(help="Sources, comma-separated: mfcc,dmfcc,fma,essentia,tags (default: all the store supports).")] = None,
    clusters: Annotated[int, typer.Option(help="K-Means clusters per audio source (K).")] = 2048,
    topics: Annotated[int, typer.Option(help="LDA topics: the size of each AGF.")] = 40,
    min_tracks: Annotated[int, typer.Option(help="Artists with fewer tracks are projected, not fitted on (the authors: 1).")] = 1,
    standardise: Annotated[bool, typer.Option(help="Scale each coefficient to unit variance before clustering (the authors cluster raw frames).")] = False,
    free_tags: Annotated[bool, typer.Option(help="The tags source uses free tags besides genre ids (the authors: genre ids only).")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    store: StoreDir = DEFAULT_STORE,
    wait: Wait = 60.0,
    quiet: Quiet = False,
):
    """Fit the cluster dictionaries and LDA of each source and store every artist's factors.

    A refit is a new model version; the old one's rows stay queryable by model_id.

    Example: agf factors build --source mfcc,dmfcc,tags --clusters 2048 --topics 40
    """
    from agf.models.factors import FactorParams, build_factors, parse_sources

    with _open(store, write=True, wait=wait) as opened:
        params = FactorParams(clusters=clusters, topics=topics, min_tracks=min_tracks, seed=seed,
                              standardise=standardise, free_tags=free_tags)
        return build_factors(opened, parse_sources(opened, source, free_tags), params, quiet=quiet)


@factors_app.command("update")
@command
def factors_update(
    source: Annotated[str | None, typer.Option(help="Sources to update (default: every fitted one).")] = None,
    store: StoreDir = DEFAULT_STORE,
    wait: Wait = 60.0,
    quiet: Quiet = False,
):
    """Project tracks and artists ingested since the factors were built, without refitting.

    Example: agf factors update
    """
    from agf.models.factors import parse_sources, update_factors

    with _open(store, write=True, wait=wait) as opened:
        return update_factors(opened, parse_sources(opened, source) if source else None, quiet=quiet)


@factors_app.command("show")
@command
def factors_show(
    artist: Annotated[str | None, typer.Argument(help="Artist name (case- and accent-insensitive).")] = None,
    artist_id: Annotated[int | None, typer.Option("--id", help="Artist id instead of a name.")] = None,
    store: StoreDir = DEFAULT_STORE,
):
    """Show an artist's strongest factors per source and the artists sharing its strongest one.

    Example: agf factors show "Doug Kaufman"
    """
    from agf.models.factors import show_artist
    from agf.store.artists import resolve_artist

    opened = _open(store)
    return show_artist(opened, resolve_artist(opened, artist, artist_id))


# -- training, embeddings, evaluation ------------------------------------------------------------

Split = Annotated[str, typer.Option(help="auto (FMA's set.split where every track has one, else artist), artist, random, stored.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")]
Precision = Annotated[str, typer.Option(help="CNN arithmetic: fp32, bf16 or int8 (8-bit integers, CPU), or auto: timed once on this machine, the fastest, a less exact one only if at least 5 % faster.")]


@app.command(rich_help_panel="Learn")
@command
def train(
    target: Annotated[str, typer.Option(help="genre, agf:mfcc, agf:dmfcc, agf:fma, agf:essentia, agf:tags, all (every CNN), or transfer.")] = "all",
    epochs: Annotated[int | None, typer.Option(help="Most epochs (CNN default 20, transfer 300).")] = None,
    batch_size: Annotated[int, typer.Option(help="Patches per batch.")] = 32,
    crops_per_track: Annotated[int, typer.Option(help="Random 1-s patches drawn per training track per epoch.")] = 8,
    patience: Annotated[int | None, typer.Option(help="Epochs without a better validation loss before stopping.")] = None,
    models: Annotated[str, typer.Option(help="Transfer inputs: 'all' (newest CNN per target) or model ids, comma-separated.")] = "all",
    refit: Annotated[bool, typer.Option(help="Transfer: refit the MLP on the training and validation tracks for the epochs "
                                             "early stopping chose; --no-refit keeps the training tracks' fit (the authors' way).")] = True,
    split: Split = "auto",
    seed: Seed = 0,
    device: Device = "auto",
    store: StoreDir = DEFAULT_STORE,
    wait: Wait = 60.0,
    quiet: Quiet = False,
):
    """Train the CNN on a target (genre or an AGF source), every CNN, or the transfer MLP.

    Example: agf train --target all --epochs 20
    """
    from agf.models.train import TrainParams, train_cnn, trainable_targets
    from agf.models.transfer import TransferParams, train_transfer

    with _open(store, write=True, wait=wait) as opened:
        if target == "transfer":
            params = TransferParams(models=models, split=split, seed=seed, device=device, refit=refit,
                                    **{k: v for k, v in {"epochs": epochs, "patience": patience}.items() if v is not None})
            return [train_transfer(opened, params, quiet=quiet)]
        params = TrainParams(batch_size=batch_size, crops_per_track=crops_per_track, split=split, seed=seed, device=device,
                             **{k: v for k, v in {"epochs": epochs, "patience": patience}.items() if v is not None})
        targets = trainable_targets(opened) if target == "all" else [target]
        return [train_cnn(opened, t, params, quiet=quiet) for t in targets]


@app.command(rich_help_panel="Learn")
@command
def embed(
    model: Annotated[str, typer.Option(help="'all' (newest CNN per target) or model ids, comma-separated.")] = "all",
    device: Device = "auto",
    precision: Precision = "auto",
    engine: EngineName = "local",
    address: Address = None,
    store: StoreDir = DEFAULT_STORE,
    wait: Wait = 60.0,
    quiet: Quiet = False,
):
    """Write the 256-d clip embeddings of every track not yet embedded by each CNN.

    Example: agf embed --model all
    """
    from agf.models.serving import embed as run_embed

    where = _engine(engine, address)
    with _open(store, write=True, wait=wait) as opened:
        return run_embed(opened, model, device=device, engine=where, quiet=quiet, precision=precision)


@app.command(rich_help_panel="Learn")
@command
def evaluate(
    out: Annotated[Path | None, typer.Option(help="Folder for report.json and confusion.png (default: the store's reports/evaluate).")] = None,
    split: Split = "auto",
    seed: Seed = 0,
    precision: Precision = "auto",
    store: StoreDir = DEFAULT_STORE,
    as_report: Annotated[bool, typer.Option("--full", help="Print the whole report, per-genre scores included.")] = False,
    quiet: Quiet = False,
):
    """Score the genre CNN, the transfer MLP and a baseline side by side on the test split.

    Example: agf evaluate --out ./report
    """
    from agf.app.evaluate import evaluate as run_evaluate
    from agf.app.evaluate import summary_rows
    from agf.progress import say

    opened = _open(store)
    out = out or opened.report_dir("evaluate")
    report = run_evaluate(opened, split=split, seed=seed, out_dir=out, precision=precision)
    say(f"split {report['split']}: {report['test_tracks']} test tracks of {report['test_artists']} artists, "
        f"{report['test_artists_also_in_training']} of them also in training; report in {out}", quiet)
    for warning in report["warnings"]:
        say(f"warning: {warning}", quiet)
    return report if as_report else summary_rows(report)


# -- similarity --------------------------------------------------------------------------------

index_app = typer.Typer(help="FAISS indexes over artist and track vectors.", no_args_is_help=True)
app.add_typer(index_app, name="index", rich_help_panel="Use")


@index_app.command("build")
@command
def index_build(
    space: Annotated[list[str] | None, typer.Option(help="Only these spaces (repeatable); default every space.")] = None,
    store: StoreDir = DEFAULT_STORE,
    wait: Wait = 60.0,
    quiet: Quiet = False,
):
    """Refresh artist_vectors and build the index of every space (exact, or IVF with its recall@10).

    Example: agf index build --space combined
    """
    from agf.app.indexing import build_indexes

    with _open(store, write=True, wait=wait) as opened:
        return build_indexes(opened, space or None, quiet=quiet)


@index_app.command("list")
@command
def index_list(store: StoreDir = DEFAULT_STORE):
    """List the saved indexes, and whether each is stale (its source data changed since).

    Example: agf index list --json
    """
    from agf.app.indexing import index_status
    from agf.progress import say

    indexes = index_status(_open(store))
    if not indexes:
        say("no index yet: run `agf index build`")
    return indexes


@app.command(rich_help_panel="Use")
@command
def similar(
    artist: Annotated[str | None, typer.Argument(help="Artist name (case- and accent-insensitive).")] = None,
    k: Annotated[int, typer.Option("-k", help="Number of neighbours.")] = 10,
    space: Annotated[str | None, typer.Option(help="agf:<source>, emb:<target> or combined (default: combined).")] = None,
    genre: Annotated[str | None, typer.Option(help="Only artists with a track of this genre (or of a subgenre of it).")] = None,
    min_tracks: Annotated[int, typer.Option(help="Only artists with at least this many tracks.")] = 1,
    artist_id: Annotated[int | None, typer.Option("--id", help="Artist id instead of a name.")] = None,
    track: Annotated[int | None, typer.Option(help="Find tracks similar to this track_id instead.")] = None,
    batch: Annotated[Path | None, typer.Option(help="Answer every query of a CSV/JSON file; JSON lines out.")] = None,
    include_same_artist: Annotated[bool, typer.Option(help="With --track: keep the query artist's own tracks.")] = False,
    exclude_album: Annotated[bool, typer.Option(help="With --track: leave out tracks of the query's album.")] = False,
    m3u: Annotated[Path | None, typer.Option(help="Also write the neighbours' clips to this playlist (extended M3U).")] = None,
    store: StoreDir = DEFAULT_STORE,
    quiet: Quiet = False,
):
    """Which artists sound like this one? Nearest artists by cosine similarity in a vector space.

    Example: agf similar "Doug Kaufman" -k 5 --space agf:mfcc
    """
    from agf.app.similar import Similar, read_queries

    if k < 1:
        raise AgfError(f"-k must be a positive number of neighbours, not {k}")
    opened = _open(store)
    service = Similar(opened, quiet=quiet)
    if batch is not None:
        for answer in service.batch(read_queries(batch), k, space, genre, min_tracks):
            typer.echo(json.dumps(answer, ensure_ascii=False))
        return None
    if track is not None:
        rows = service.tracks(track, k, space, same_artist=include_same_artist, same_album=not exclude_album)
    elif artist is None and artist_id is None:
        raise AgfError("name an artist, or give --id, --track or --batch")
    else:
        rows = service.artists(service.directory.resolve(artist, artist_id), k, space, genre, min_tracks)
    if m3u is not None:
        from agf.app.playlists import neighbours_playlist
        from agf.progress import say

        written = neighbours_playlist(opened, rows, m3u)
        say(f"playlist {written['playlist']}: {written['entries']} clips", quiet)
    return rows


@app.command("map", rich_help_panel="Use")
@command
def map_(
    out: Annotated[Path, typer.Argument(help="PNG file to write.")],
    space: Annotated[str, typer.Option(help="The vector space to draw.")] = "combined",
    method: Annotated[str, typer.Option(help="pca or tsne.")] = "pca",
    store: StoreDir = DEFAULT_STORE,
):
    """Draw the artists of a space in 2-D, coloured by top genre, the largest labelled.

    Example: agf map artists.png --space agf:mfcc --method tsne
    """
    from agf.app.maps import draw_map

    return draw_map(_open(store), space, out, method)


@app.command(rich_help_panel="Use")
@command
def tag(
    paths: Annotated[list[Path] | None, typer.Argument(help="Audio files or folders of new music.")] = None,
    manifest: Annotated[Path | None, typer.Option(help="CSV of the files with a path column (and artist, album, title...): paths relative to the first PATH folder, else to the CSV.")] = None,
    model: Annotated[str | None, typer.Option(help="Transfer model id (default: the newest).")] = None,
    top: Annotated[int, typer.Option(help="Genres shown per file; with --write-tags, written at most.")] = 3,
    write_tags: Annotated[bool, typer.Option("--write-tags", help="Write the genres into the files' own tags (ID3 TCON, Vorbis GENRE, MP4 ©gen, APEv2 Genre, WMA WM/Genre); --undo takes them back.")] = False,
    min_probability: Annotated[float, typer.Option(help="With --write-tags: write only genres at least this probable (calibrated).")] = 0.5,
    genres_map: Annotated[Path | None, typer.Option(help="With --write-tags: JSON or CSV mapping the model's genres to your names; genres it leaves out are not written.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --write-tags or --undo: show the changes, touch no file.")] = False,
    undo: Annotated[bool, typer.Option("--undo", help="Put back the genre tags agf wrote (to PATHs only, if given) as they were.")] = False,
    since: Annotated[str | None, typer.Option(help="With --undo: only what agf wrote since this time (2026-11-27T16:00, UTC).")] = None,
    m3u: Annotated[Path | None, typer.Option(help="Also write the tagged files to this playlist (extended M3U), grouped by genre.")] = None,
    workers: Annotated[int | None, typer.Option(help="Ingest worker processes (default: every core this process may use).")] = None,
    chunk_size: Annotated[int, typer.Option(help="Files ingested, embedded, classified and committed together.")] = 256,
    device: Device = "auto",
    precision: Precision = "auto",
    engine: EngineName = "local",
    address: Address = None,
    store: StoreDir = DEFAULT_STORE,
    wait: Wait = 60.0,
    quiet: Quiet = False,
):
    """Tag new music with genres: ingest, embed with the stored CNNs, predict with the transfer MLP.

    Every genre's probability goes to the predictions table; the table shows the top ones per
    file. --write-tags puts them in the files' own tags too (the audio is never rewritten), after
    recording what the tags held, so that --undo can put that back.

    Example: agf tag ./new_music/ --write-tags --min-probability 0.4 --dry-run
    """
    from agf.app.filetags import GenrePolicy, parse_since, read_genres_map, undo as undo_tags
    from agf.app.tag import files_to_tag, tag_files
    from agf.progress import say

    if undo:
        with _open(store, write=True, wait=wait) as opened:
            return undo_tags(opened, since=parse_since(since), paths=paths, dry_run=dry_run)
    if dry_run and not write_tags:
        raise AgfError("--dry-run goes with --write-tags or --undo")
    policy = GenrePolicy(min_probability, top, read_genres_map(genres_map) if genres_map else None) if write_tags else None
    notes = []
    candidates, where = files_to_tag(paths, manifest, notes=notes), _engine(engine, address)
    for note in notes:
        say(note, quiet)
    opened = _open(store, write=True, wait=wait)

    def rows():  # one row per file as its chunk is committed: output and memory stay bounded
        with opened:
            yield from tag_files(opened, candidates, model=model, top=top, workers=workers, chunk_size=chunk_size,
                                 device=device, precision=precision, engine=where, quiet=quiet, write=policy,
                                 dry_run=dry_run, m3u=m3u)

    return rows()


@app.command(rich_help_panel="Use")
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on; the default answers this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    store: StoreDir = DEFAULT_STORE,
    quiet: Quiet = False,
):
    """A local web page over the store: search artists, listen, see why artists are similar, the map.

    The store is opened read-only; audio is served only from the paths it recorded.

    Example: agf serve --port 8080
    """
    from agf.app.web import create_app, serve as run_server
    from agf.progress import say

    try:
        web_app = create_app(store)
        if host not in ("127.0.0.1", "localhost", "::1"):
            say(f"warning: listening on {host}: anyone who can reach this machine can browse the store and play its audio",
                quiet)
        run_server(web_app, host, port, quiet)
    except AgfError as exc:
        fail(str(exc))


# -- the demo -----------------------------------------------------------------------------------


@app.command(rich_help_panel="Start")
@command
def demo(
    corpus: Annotated[Path | None, typer.Option(help="Where the demo corpus is written (default: ~/.local/share/agf/demo/corpus).")] = None,
    quick: Annotated[bool, typer.Option(help="A smaller corpus and shorter training: under 2 minutes.")] = False,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: every core this process may use).")] = None,
    store: Annotated[Path | None, typer.Option("--store", help="The demo's store (default: ~/.local/share/agf/demo/store; AGF_STORE is not used, so a demo never writes into your own store).")] = None,
    quiet: Quiet = False,
):
    """Generate the demo corpus and run the whole pipeline on it, then print a report.

    Nothing is written in the current folder: the corpus, the store and its reports go under
    ~/.local/share/agf/demo unless --corpus and --store say otherwise.

    Example: agf demo --quick --store ./demo-store
    """
    from agf.app.demo import run_demo

    return run_demo(corpus, store, quick=quick, workers=workers, quiet=quiet)


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    try:
        app()
    except BrokenPipeError:
        sys.stderr.close()
    except KeyboardInterrupt:  # Ctrl-C before a command started (while libraries load): one line, no traceback
        print("Error: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

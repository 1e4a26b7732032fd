"""Serving the trained models: CNN embeddings of clips, and genre probabilities from them.

Training lives in :mod:`agf.models.train` and :mod:`agf.models.transfer`; this module only loads
stored models (hash verified, ``weights_only``) and runs them, on this machine or, for
embedding, on a Ray cluster's actor pool (:class:`ClipEmbedder`).
"""

import contextlib
import functools
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from agf.engine import LOCAL, Engine, keep_freed_memory, ray_actor_map
from agf.errors import AgfError
from agf.models.calibration import calibrate
from agf.models.cnn import (EMBEDDING_DIM, INFERENCE_REVISION, PATCH_FRAMES, ClipCNN, TransferMLP, inference_copy,
                            int8_available)
from agf.models.data import PatchReader, patch_windows
from agf.models.factors import CNN_TARGETS
from agf.progress import say
from agf.store import Store, fixed_vectors, now_utc
from agf.store.paths import replace_text
from agf.store.registry import latest_model, load_checkpoint, load_weights


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise AgfError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(requested)


#: The CNN arithmetics, from the most exact (see :func:`inference_copy`).
ARITHMETICS = ("fp32", "bf16", "int8")
PRECISIONS = ("auto", *ARITHMETICS)


def pick_precision(device: torch.device, requested: str = "auto") -> str:
    """The arithmetic of CNN inference on ``device``: 'fp32', 'bf16' or 'int8' (see
    :func:`inference_copy`).

    'auto' is the one :func:`measured_precision` chose on this machine.
    """
    if requested not in PRECISIONS:
        raise AgfError(f"unknown precision {requested!r}; choose {', '.join(PRECISIONS)}")
    if requested == "int8" and requested not in arithmetics(device):
        where = ("the CPU only" if device.type != "cpu"
                 else "oneDNN's 8-bit convolutions summing exactly, which this machine's PyTorch lacks")
        raise AgfError(f"--precision int8 runs on {where}: choose fp32 or bf16")
    return measured_precision(device) if requested == "auto" else requested


def arithmetics(device: torch.device) -> tuple[str, ...]:
    """The arithmetics that run on ``device``: 8-bit integers on a CPU whose PyTorch has them."""
    return ARITHMETICS if device.type == "cpu" and int8_available() else ARITHMETICS[:2]


#: A less exact arithmetic is chosen only when it is at least this much faster than the more
#: exact one chosen so far: bfloat16's embeddings move by ~0.3 %, 8-bit integers' by ~1 %.
SPEED_MARGIN = 1.05
_MEASURED: dict[str, str] = {}


def measured_precision(device: torch.device) -> str:
    """The arithmetic chosen by timing each on ``device``: from float32, down the list of
    :data:`ARITHMETICS` to each that ran at least 5 % faster than the one chosen before it.

    Timed once per machine (the CNN on a few batches of patches, about two seconds), then
    remembered in ``$XDG_CACHE_HOME/agf/precision.json`` under the device's name, torch's
    version and :data:`~agf.models.cnn.INFERENCE_REVISION`: a CPU flag says what the hardware
    has, not what runs faster
    (a CPU with AVX512-BF16 was measured slower in bfloat16 on one machine of this kind).
    """
    key = measured_key(device)
    if key in _MEASURED:
        return _MEASURED[key]
    path = precision_cache()
    known = _read_json(path)
    if not isinstance(known.get(key), dict) or known[key].get("precision") not in arithmetics(device):
        speeds = _patches_per_second(device, arithmetics(device))
        chosen = ARITHMETICS[0]
        for arithmetic in speeds:
            if speeds[arithmetic] >= SPEED_MARGIN * speeds[chosen]:
                chosen = arithmetic
        known[key] = {"precision": chosen, "patches_per_s": {p: round(v) for p, v in speeds.items()},
                      "measured_at": now_utc().isoformat()}
        _write_json(path, known)
    _MEASURED[key] = known[key]["precision"]
    return _MEASURED[key]


def measured_key(device: torch.device) -> str:
    """What a measurement of :func:`measured_precision` is kept under: the device's name, torch's
    version and :data:`~agf.models.cnn.INFERENCE_REVISION`."""
    # not the thread count: a Ray actor (one thread) and its driver must choose alike, or their
    # embeddings of one clip would differ
    return f"{device.type}:{_device_name(device)}:torch {torch.__version__}:inference {INFERENCE_REVISION}"


def precision_cache() -> Path:
    """``$XDG_CACHE_HOME/agf/precision.json`` (``~/.cache/agf/precision.json``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agf" / "precision.json"


@functools.lru_cache(maxsize=8)  # asked on every batch of clips: /proc/cpuinfo once
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _patches_per_second(device: torch.device, precisions: tuple[str, ...], rounds: int = 5) -> dict[str, float]:
    """Patches per second of an untrained CNN's embedding in each of ``precisions``, run as
    inference runs there (batches side by side on a CPU's threads, :func:`forward_threads`): the
    best of ``rounds``, each precision timed in turn so that a busy spell of the machine hits all alike."""
    batch, side_by_side = forward_patches(device), forward_width(device)
    generator = torch.Generator().manual_seed(0)
    models = {p: inference_copy(ClipCNN(8).to(device), p) for p in precisions}
    frames = torch.randn(batch * PATCH_FRAMES, 128, generator=generator).to(device)
    windows = torch.arange(len(frames), device=device).reshape(batch, PATCH_FRAMES)
    mean, std = torch.zeros(128, device=device), torch.ones(128, device=device)
    best = {p: float("inf") for p in models}
    with forward_threads(device) as submit:
        for round_ in range(rounds + 2):  # the first two set oneDNN up
            for precision, model in models.items():
                started = time.perf_counter()
                for future in [submit(_embed_patches, model, frames, windows, mean, std) for _ in range(side_by_side)]:
                    future.result()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if round_ >= 2:
                    best[precision] = min(best[precision], time.perf_counter() - started)
    return {p: side_by_side * batch / seconds for p, seconds in best.items()}


def _read_json(path: Path) -> dict:
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _write_json(path: Path, content: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_text(path, json.dumps(content, indent=2, sort_keys=True))
    except OSError:
        pass  # a read-only home: measured again next time


def run_precision(device: str, precision: str, engine: Engine = LOCAL) -> str:
    """The precision a run records: resolved for this machine's device, or, on Ray, as asked
    (each actor resolves 'auto' for its own device)."""
    return precision if engine.is_ray else pick_precision(pick_device(device), precision)


def load_cnn(store: Store, model_id: str, device: torch.device | None = None) -> tuple[ClipCNN, PatchReader, dict]:
    """A stored CNN (hash verified, ``weights_only`` load), its spectrogram reader, and config."""
    checkpoint = load_checkpoint(store, model_id)
    config = checkpoint["config"]
    model = load_weights(ClipCNN(len(config["classes"]), config["n_mels"]), checkpoint, model_id)
    model.activation_ranges = _activation_ranges(checkpoint, model, model_id)
    spectra = PatchReader.of_store(store, checkpoint["mean"].numpy(), checkpoint["std"].numpy())
    return model.to(device or pick_device()), spectra, config


def _activation_ranges(checkpoint: dict, model: ClipCNN, model_id: str) -> torch.Tensor | None:
    """The checkpoint's activation ranges (blocks, 2), checked; None from a checkpoint saved
    before agf measured them (8-bit inference then reads the batch norms' statistics)."""
    ranges = checkpoint.get("activation_ranges")
    if ranges is None:
        return None
    shape = (len(model.features), 2)
    # bounded: a range of 1e38 would make each code's step infinite, and its values NaN
    if (not isinstance(ranges, torch.Tensor) or tuple(ranges.shape) != shape or not ranges.is_floating_point()
            or not (ranges.abs() <= MAX_ACTIVATION).all() or (ranges[:, 0] > ranges[:, 1]).any()):
        raise AgfError(f"model {model_id}'s activation ranges are not {shape[0]} (low, high) pairs within "
                       f"±{MAX_ACTIVATION:g}")
    return ranges.float()


#: The largest activation range a checkpoint may give: far beyond any trained network's (a
#: batch-normed convolution's outputs are within tens).
MAX_ACTIVATION = 1e6


def cnn_models(store: Store, spec: str = "all") -> list[str]:
    """Model ids named by ``spec``: 'all' is the newest CNN of every target; else comma-separated ids."""
    if spec != "all":
        return [s.strip() for s in spec.split(",") if s.strip()]
    ids = [row["model_id"] for t in CNN_TARGETS if (row := latest_model(store, "cnn", t))]
    if not ids:
        raise AgfError("no trained CNN in the store: run `agf train --target all` first")
    return ids


def forward_patches(device: torch.device) -> int:
    """Patches per forward pass: 64 on a CPU, where a batch whose activations fit in cache runs
    about 1.7x faster than larger ones; 2,048 on a GPU, which a small batch leaves idle."""
    return 2048 if device.type == "cuda" else 64


@torch.no_grad()
def clip_outputs(model: ClipCNN, spectra: PatchReader, track_ids: list[int], device: torch.device,
                 batch_patches: int | None = None, precision: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Clip-level embeddings (n, 256) and probabilities (n, classes): means over every patch.

    Patches of consecutive tracks share forward passes of ``batch_patches`` (default
    :func:`forward_patches`). ``precision`` is chosen by :func:`pick_precision`.
    """
    return models_clip_outputs([(model, spectra)], track_ids, device, batch_patches, precision)[0]


@torch.no_grad()
def models_clip_outputs(models: list[tuple[ClipCNN, PatchReader]], track_ids: list[int], device: torch.device,
                        batch_patches: int | None = None, precision: str = "auto") -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`clip_outputs` of several CNNs over the same clips, each clip read and moved to
    ``device`` once for all of them: per model, embeddings (n, 256) and probabilities (n, classes).

    The readers must read the same frames (one store's log-mel); each standardises with its own
    model's statistics, on ``device``. On a CPU the forward passes of every model run side by
    side, one per thread (:func:`forward_threads`).
    """
    keep_freed_memory()  # each batch's activations reuse the last one's pages
    copies = [inference_copy(model, pick_precision(device, precision)) for model, _ in models]
    scales = [(torch.as_tensor(r.mean, dtype=torch.float32, device=device),
               torch.as_tensor(r.std, dtype=torch.float32, device=device)) for _, r in models]
    batch = batch_patches or forward_patches(device)
    outputs = [(np.zeros((len(track_ids), EMBEDDING_DIM), np.float32), np.zeros((len(track_ids), m.n_outputs), np.float32))
               for m in copies]
    group = max(batch * forward_width(device), 512)  # patches: a batch of each model for every forward thread
    with forward_threads(device) as submit:
        for rows, frames, windows, firsts in _patch_groups(models[0][1], track_ids, group):
            # (frames of the group's clips, n_mels): moved as float16 and widened once for every model
            frames = frames.to(device).float()
            counts = np.diff(np.append(firsts, len(windows)))[:, None]  # each clip's patches
            windows = windows.to(device)
            passes = [[submit(_embed_patches, copy, frames, windows[i : i + batch], mean, std)
                       for i in range(0, len(windows), batch)] for copy, (mean, std) in zip(copies, scales)]
            for copy, done, (embeddings, probabilities) in zip(copies, passes, outputs):
                emb = torch.cat([future.result() for future in done])
                prob = torch.softmax(copy.head(emb), dim=1)
                # summed per clip on the host, in patch order: the same sums whatever the device
                embeddings[rows] = np.add.reduceat(emb.cpu().numpy(), firsts) / counts
                probabilities[rows] = np.add.reduceat(prob.cpu().numpy(), firsts) / counts
    return outputs


@torch.no_grad()  # grad mode is per thread: a forward thread needs its own
def _embed_patches(copy: ClipCNN, frames: torch.Tensor, windows: torch.Tensor, mean: torch.Tensor,
                   std: torch.Tensor) -> torch.Tensor:
    """Embeddings (n, 256) of the patches whose frame indices are ``windows`` (n, 43), each
    standardised band by band (n_mels,) as it is cut from ``frames`` (n_frames, n_mels)."""
    x = (frames[windows] - mean) / std  # (patches, 43, n_mels): element by element, as before cutting
    return copy.embed(x.transpose(1, 2).unsqueeze(1).contiguous(memory_format=torch.channels_last))


#: Forward passes run side by side at most: each holds a batch's activations (30 to 60 MB).
MAX_FORWARD_THREADS = 16


def forward_width(device: torch.device) -> int:
    """Forward passes that :func:`forward_threads` runs at once on ``device``: PyTorch's thread
    count on a CPU, up to :data:`MAX_FORWARD_THREADS`; else 1."""
    return min(torch.get_num_threads(), MAX_FORWARD_THREADS) if device.type == "cpu" else 1


@contextlib.contextmanager
def forward_threads(device: torch.device) -> Iterator[Callable[..., Future]]:
    """Yields ``submit(fn, *args) -> Future``: on a CPU with several PyTorch threads, a pool of
    :func:`forward_width` threads, each running whole forward passes; elsewhere, each call run
    at once. While the block lasts PyTorch's thread count is its share per pass (one, up to
    16 cores), and it is restored after.

    Whole batches side by side beat each batch split among the cores: no barrier after each
    layer, no thread waiting for another's half (tagging's CNNs took 10 % less time on 2 cores).
    PyTorch's thread count is process-wide, so other PyTorch work of this process runs on that
    share too while the block lasts.
    """
    threads, width = torch.get_num_threads(), forward_width(device)
    if width == 1:
        yield _run_now
        return
    pool, pending = _forward_pool(width), set()

    def submit(fn: Callable, *args) -> Future:
        future = pool.submit(fn, *args)
        pending.add(future)
        future.add_done_callback(pending.discard)
        return future

    torch.set_num_threads(max(1, threads // width))
    try:
        yield submit
    finally:
        for future in list(pending):  # left by an error or an interruption: not to run on unasked
            future.cancel()
        torch.set_num_threads(threads)


@functools.cache
def _forward_pool(threads: int) -> ThreadPoolExecutor:
    """One pool per thread count for the process's life: threads made anew for every call would
    each leave their own allocator arena and oneDNN scratchpad behind (peak memory grew by ~80 MB
    a call)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="agf-forward")


os.register_at_fork(after_in_child=_forward_pool.cache_clear)  # a forked child's copy has no threads


def _run_now(fn: Callable, *args) -> Future:
    done: Future = Future()
    done.set_result(fn(*args))
    return done


def _patch_groups(spectra: PatchReader, track_ids: list[int], patches: int) -> Iterator[tuple]:
    """Consecutive clips in groups of at least ``patches`` patches: (rows in ``track_ids``, their
    frames stacked (n_frames, n_mels) float16, each patch's frame indices (n_patches, 43), and
    each clip's first patch (n_clips,))."""
    rows, frames, windows, firsts, n_frames, n_patches = [], [], [], [], 0, 0
    for row, track_id in enumerate(track_ids):
        clip = spectra.inference_frames(track_id)
        rows.append(row)
        frames.append(clip)
        firsts.append(n_patches)
        windows.append(patch_windows(len(clip)) + n_frames)
        n_frames, n_patches = n_frames + len(clip), n_patches + len(windows[-1])
        if n_patches >= patches or row == len(track_ids) - 1:
            yield (np.asarray(rows), torch.from_numpy(np.concatenate(frames)), torch.from_numpy(np.concatenate(windows)),
                   np.asarray(firsts))
            rows, frames, windows, firsts, n_frames, n_patches = [], [], [], [], 0, 0


class ClipEmbedder:
    """A Ray actor: loads one CNN from the store once, then embeds batches of track ids."""

    def __init__(self, root: str, model_id: str, device: str, precision: str):
        self.device, self.precision = pick_device(device), precision
        self.model, self.spectra, _ = load_cnn(Store.open(Path(root)), model_id, self.device)

    def __call__(self, batch: dict) -> dict:
        ids = [int(t) for t in batch["item"]]
        vectors, _ = clip_outputs(self.model, self.spectra, ids, self.device, precision=self.precision)
        return {"track_id": np.asarray(ids, np.int64), "vector": vectors}


def embedding_chunks(store: Store, model_ids: list[str], track_ids: list[int], device: str = "auto",
                     engine: Engine = LOCAL, loaded: dict | None = None, chunk: int = 2048, precision: str = "auto",
                     ) -> Iterator[tuple[str, list[int], np.ndarray]]:
    """Clip embeddings of ``track_ids`` by each of ``model_ids``: (model id, track ids, (n, 256)
    float32) chunks.

    Locally with ``loaded`` (model id -> (model, spectrogram reader)) or the models loaded here,
    each chunk's clips read once for every model; with a Ray engine, by an actor pool on the
    cluster, model after model. ``precision`` as in :func:`pick_precision`.
    """
    if not track_ids:
        return  # nothing to embed: no model to load, no cluster work to start
    if engine.is_ray:
        for model_id in model_ids:
            for batch in ray_actor_map(engine, ClipEmbedder, (str(store.root), model_id, device, precision), track_ids):
                yield model_id, batch["track_id"].tolist(), np.asarray(batch["vector"], np.float32)
        return
    chosen = pick_device(device)
    loaded = loaded or {m: load_cnn(store, m, chosen)[:2] for m in model_ids}
    for start in range(0, len(track_ids), chunk):
        ids = track_ids[start : start + chunk]
        outputs = models_clip_outputs([loaded[m] for m in model_ids], ids, chosen, precision=precision)
        for model_id, (vectors, _) in zip(model_ids, outputs):
            yield model_id, ids, vectors


def unembedded(store: Store, model_id: str, track_ids: list[int] | None = None) -> list[int]:
    """The stored tracks (all, or those of ``track_ids``) that ``model_id`` has not embedded yet."""
    among = "" if track_ids is None else "AND track_id IN (SELECT unnest(?::BIGINT[]))"
    return store.query(f"SELECT track_id FROM tracks WHERE audio_sha256 IS NOT NULL AND track_id NOT IN "
                       f"(SELECT track_id FROM embeddings WHERE model_id = ?) {among} ORDER BY 1",
                       [model_id] + ([track_ids] if track_ids is not None else []))["track_id"].to_pylist()


def embedding_groups(store: Store, model_ids: list[str], track_ids: list[int] | None = None) -> list[tuple[list[str], list[int]]]:
    """``model_ids`` grouped by the tracks (all, or those of ``track_ids``) each has yet to
    embed: (models, tracks) pairs, so that the models of a group read each clip once."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for model_id in model_ids:
        groups.setdefault(tuple(unembedded(store, model_id, track_ids)), []).append(model_id)
    return [(models, list(todo)) for todo, models in groups.items()]


def embed(store: Store, spec: str = "all", device: str = "auto", engine: Engine = LOCAL, quiet: bool = False,
          precision: str = "auto") -> list[dict]:
    """Write the clip embeddings of every track not yet embedded by each chosen CNN; one row
    per model (models that embed the same tracks run together, and share their seconds).

    A part is committed per chunk of 2,048 tracks: an interruption keeps what is done.
    """
    results = []
    where = "a Ray cluster" if engine.is_ray else pick_device(device)
    arithmetic = run_precision(device, precision, engine)
    for models, todo in embedding_groups(store, cnn_models(store, spec)):
        started = time.perf_counter()
        for model_id, ids, vectors in embedding_chunks(store, models, todo, device, engine, precision=precision):
            with store.transaction(params={"model_id": model_id, "precision": arithmetic}) as tx:
                tx.append("embeddings", embedding_rows(model_id, ids, vectors))
        seconds = time.perf_counter() - started
        say(f"embedded {len(todo)} tracks with {', '.join(models)} on {where} ({arithmetic}) in {seconds:.1f} s", quiet)
        results += [{"model_id": model_id, "embedded": len(todo), "precision": arithmetic, "seconds": round(seconds, 2),
                     "tracks_per_s": round(len(todo) / seconds, 1) if todo else None} for model_id in models]
    return results


def embedding_rows(model_id: str, track_ids: list[int], vectors: np.ndarray):
    """Rows of the embeddings table."""
    return pa.table({"track_id": pa.array(track_ids, pa.int64()), "model_id": [model_id] * len(track_ids),
                     "vector": fixed_vectors(vectors)})


# -- classifying embeddings -----------------------------------------------------------------------


def embedding_matrix(store: Store, model_ids: list[str], track_ids: list[int]) -> np.ndarray:
    """The concatenated embeddings (n_tracks, 256 * n_models) of ``track_ids``."""
    blocks = []
    for model_id in model_ids:
        ids, vectors = store.vectors("embeddings", "model_id = ? AND list_contains(?, track_id)", [model_id, list(track_ids)])
        row = {t: i for i, t in enumerate(ids.tolist())}
        missing = [t for t in track_ids if t not in row]
        if missing:
            raise AgfError(f"{len(missing)} tracks have no embedding from {model_id}: run `agf embed` first")
        blocks.append(vectors[[row[t] for t in track_ids]])
    return np.concatenate(blocks, axis=1)


def load_transfer(store: Store, model_id: str) -> tuple[TransferMLP, dict, np.ndarray, np.ndarray]:
    checkpoint = load_checkpoint(store, model_id)
    config = checkpoint["config"]
    model = load_weights(TransferMLP(checkpoint["mean"].numel(), len(config["classes"]), config["hidden"]), checkpoint,
                         model_id)
    return model.eval(), config, checkpoint["mean"].numpy(), checkpoint["std"].numpy()


@torch.no_grad()
def classify(loaded: tuple, embeddings: np.ndarray) -> np.ndarray:
    """Calibrated genre probabilities (n_tracks, n_genres) of concatenated embeddings
    (n_tracks, 256 * n_models, in the order of ``config["models"]``), by a transfer model as
    :func:`load_transfer` returned it."""
    model, config, mean, std = loaded
    x = ((embeddings - mean) / std).astype(np.float32)
    probabilities = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    return calibrate(probabilities, config.get("temperature", 1.0))


def transfer_probabilities(store: Store, model_id: str, track_ids: list[int], loaded: tuple | None = None) -> tuple[list[str], np.ndarray]:
    """Genre classes and probabilities (n_tracks, n_genres) of stored tracks, from their stored
    embeddings. ``loaded`` is what :func:`load_transfer` returned for ``model_id``."""
    loaded = loaded or load_transfer(store, model_id)
    return loaded[1]["classes"], classify(loaded, embedding_matrix(store, loaded[1]["models"], track_ids))


def prediction_rows(track_ids: list[int], model_id: str, classes: list[str], probabilities: np.ndarray) -> list[dict]:
    """Rows of the predictions table: every genre of every track, ranked by probability."""
    at = now_utc()
    rows = []
    for track_id, p in zip(track_ids, probabilities):
        for rank, c in enumerate(np.argsort(-p), start=1):
            rows.append({"track_id": track_id, "model_id": model_id, "genre": classes[c], "probability": float(p[c]),
                         "rank": rank, "predicted_at": at})
    return rows

"""CNN speed: training samples/s and embedding tracks/s, on the CPU and on a GPU when present.

A synthetic store of 30 s log-mel frame matrices (1,292 x 128, float16) with genre labels is
written to a real frame cache; then, per device:

- training: one epoch of the genre CNN (``fit_cnn``), samples/s from its metrics;
- embedding: clip embeddings of every track over all their 1-s patches, batched across tracks
  (``clip_outputs``: 64 patches per forward on a CPU, 512 on a GPU) at the default precision
  (bfloat16 where the device has it natively) and in float32, against the straightforward
  loop of one float32 forward per track (its ~30 patches), in the same run.

Usage: python bench/train.py [--tracks 200]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from agf.models.train import TrainParams, fit_cnn
from agf.models.serving import clip_outputs, pick_precision
from agf.store import FrameCache, Store


def synthetic_store(root: Path, n_tracks: int) -> Store:
    store = Store.open(root, create=True)
    rng = np.random.default_rng(0)
    cache = FrameCache(store.root, "logmel")
    genres = ["Rock", "Electronic", "Jazz", "Classical"]
    for track_id in range(1, n_tracks + 1):
        cache.write(track_id, rng.normal(-40, 10, size=(1292, 128)) + 5 * (track_id % 4))
    with store.transaction() as tx:
        tx.append("tracks", pa.Table.from_pylist([
        {"track_id": t, "source_id": str(t), "path": f"{t}.mp3", "audio_sha256": str(t), "title": str(t),
         "artist_id": t % 40, "album_id": None, "duration_s": 30.0, "sample_rate": 22050,
         "genre_top": genres[t % 4], "genres": [], "genres_all": [], "tags": [], "split": None, "subset": None,
         "ingested_at": None} for t in range(1, n_tracks + 1)]))
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=200)
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(Path(tmp) / "s", args.tracks)
        for device in devices:
            params = TrainParams(epochs=1, crops_per_track=8, device=device)
            model, spectra, _, metrics = fit_cnn(store, "genre", params, quiet=True)
            print(f"{device:5s} training: {metrics['train_samples_per_s']:8.1f} samples/s "
                  f"(batch {params.batch_size}, {metrics['train_tracks'] * params.crops_per_track} samples)", flush=True)
            ids = list(range(1, args.tracks + 1))
            default = pick_precision(torch.device(device))
            plans = [(f"batched, {default}", None, default), ("batched, fp32", None, "fp32"),
                     ("one forward per track", 1, "fp32")]
            for label, batch, precision in plans[1:] if default == "fp32" else plans:
                started = time.perf_counter()
                clip_outputs(model, spectra, ids, torch.device(device), batch_patches=batch, precision=precision)
                seconds = time.perf_counter() - started
                print(f"{device:5s} embedding, {label:22s}: {args.tracks / seconds:7.1f} tracks/s "
                      f"({args.tracks * len(spectra.patches(1)) / seconds:8.1f} patches/s)", flush=True)
        if len(devices) == 1:
            print("no CUDA device: GPU figures not measured")


if __name__ == "__main__":
    main()

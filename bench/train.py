"""CNN speed: training samples/s and embedding tracks/s, on the CPU and on a GPU when present.

Synthetic 30 s log-mel matrices (1,292 x 128, float16, as the store keeps them) with genre
labels, held in memory; then, per device:

- training: one epoch of the genre CNN (the estimator, ``ClipCNNTrainer.fit``), samples/s from its metrics;
- embedding: clip embeddings of every track over all their 1-s patches, batched across tracks
  (``clip_outputs``: 64 patches per forward on a CPU, 2,048 on a GPU, standardised and cut on
  the device) at the default precision (whichever was measured faster there) and in float32,
  against the straightforward loop of one float32 forward per track (its ~30 patches,
  standardised and cut on the host), in the same run.

Usage: python bench/train.py [--tracks 200] [--json]
"""

import argparse
import json
import time

import numpy as np
import torch

from agf.models.data import ClipFrames, PatchReader
from agf.models.serving import clip_outputs, pick_precision
from agf.models.train import ClipCNNTrainer, TrainParams


def synthetic_clips(n_tracks: int) -> tuple[PatchReader, np.ndarray]:
    """``n_tracks`` 30-s log-mel matrices (1,292 x 128, float16, as stored) of four genres, and
    their one-hot targets (n_tracks, 4)."""
    rng = np.random.default_rng(0)
    clips = {t: (rng.normal(-40, 10, size=(1292, 128)) + 5 * (t % 4)).astype(np.float16) for t in range(1, n_tracks + 1)}
    return PatchReader(ClipFrames(clips), 128), np.eye(4, dtype=np.float32)[[t % 4 for t in clips]]


@torch.no_grad()
def one_forward_per_track(model, spectra: PatchReader, ids: list[int], device: torch.device) -> list[torch.Tensor]:
    """The straightforward loop: each track's patches through the model as trained, one forward each."""
    model = model.eval().to(device)
    return [model.embed(torch.from_numpy(spectra.patches(t)[:, None]).to(device)).mean(dim=0).cpu() for t in ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="End with one JSON line of the figures.")
    args = parser.parse_args()
    figures = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    spectra, y = synthetic_clips(args.tracks)
    ids = list(range(1, args.tracks + 1))
    for device in devices:
        params = TrainParams(epochs=1, crops_per_track=8, device=device)
        trainer = ClipCNNTrainer(params).fit(spectra, ids[: args.tracks * 4 // 5], y[: args.tracks * 4 // 5],
                                             ids[args.tracks * 4 // 5:], y[args.tracks * 4 // 5:])
        model, metrics = trainer.model_, trainer.metrics_
        figures[f"{device}_train_samples_per_s"] = metrics["train_samples_per_s"]
        print(f"{device:5s} training: {metrics['train_samples_per_s']:8.1f} samples/s "
              f"(batch {params.batch_size}, {metrics['train_tracks'] * params.crops_per_track} samples)", flush=True)
        default = pick_precision(torch.device(device))
        plans = [(f"batched, {default}", True, default), ("batched, fp32", True, "fp32"),
                 ("one forward per track", False, "fp32")]
        for label, batched, precision in plans[1:] if default == "fp32" else plans:
            started = time.perf_counter()
            if batched:
                clip_outputs(model, spectra, ids, torch.device(device), precision=precision)
            else:
                one_forward_per_track(model, spectra, ids, torch.device(device))
            seconds = time.perf_counter() - started
            figures[f"{device}_embed_tracks_per_s ({label})"] = round(args.tracks / seconds, 1)
            print(f"{device:5s} embedding, {label:22s}: {args.tracks / seconds:7.1f} tracks/s "
                  f"({args.tracks * len(spectra.patches(1)) / seconds:8.1f} patches/s)", flush=True)
    if len(devices) == 1:
        print("no CUDA device: GPU figures not measured")
    if args.json:
        print(json.dumps({"tracks": args.tracks, **figures}))


if __name__ == "__main__":
    main()

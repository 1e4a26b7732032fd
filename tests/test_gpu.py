"""The GPU paths, against the CPU's: CUDA inference and faiss-GPU search. Marked ``gpu``: they
run with ``pytest -m gpu`` on a machine with CUDA (``bench/gpu.sh`` does) and skip elsewhere.
``bench/gpu.sh --check``, what of it runs without a GPU, is checked here on every machine."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agf.models.cnn import ClipCNN
from agf.store import index as index_module

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
needs_faiss_gpu = pytest.mark.skipif(not index_module.gpu_available(), reason="no faiss GPU build or no GPU")


def test_the_gpu_script_s_cpu_side_runs_here():
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--check"], capture_output=True, text=True,
                            timeout=600, cwd=ROOT, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    assert "the benchmarks speak JSON" in result.stdout


@pytest.mark.gpu
@needs_cuda
def test_cuda_embeddings_match_the_cpu_s():
    from agf.models.cnn import inference_copy

    torch.manual_seed(0)
    model = ClipCNN(8).eval()
    patches = torch.randn(32, 1, 128, 43)
    with torch.no_grad():
        cpu = model.embed(patches)
        cuda = model.to("cuda").embed(patches.to("cuda")).cpu()
        fast = inference_copy(model, "bf16").embed(patches.to("cuda").contiguous(memory_format=torch.channels_last)).cpu()
    assert torch.nn.functional.cosine_similarity(cpu, cuda).min() > 0.999
    assert torch.nn.functional.cosine_similarity(cpu, fast).min() > 0.999  # the bfloat16 inference copy


@pytest.mark.gpu
@needs_cuda
def test_clips_standardised_and_cut_on_the_gpu_give_the_cpu_s_clip_outputs():
    from agf.models.data import ClipFrames, PatchReader
    from agf.models.serving import models_clip_outputs

    rng = np.random.default_rng(0)
    clips = {t: rng.normal(-40, 10, size=(n, 128)).astype(np.float16) for t, n in zip(range(1, 80), rng.integers(20, 1400, 79))}
    torch.manual_seed(0)
    models = [(ClipCNN(k).eval(), PatchReader(ClipFrames(clips), 128, np.full(128, -40, np.float32), np.full(128, 10, np.float32)))
              for k in (4, 8)]
    cpu = models_clip_outputs(models, list(clips), torch.device("cpu"), precision="fp32")
    cuda = models_clip_outputs([(m.to("cuda"), r) for m, r in models], list(clips), torch.device("cuda"), precision="fp32")
    for (cpu_emb, cpu_prob), (cuda_emb, cuda_prob) in zip(cpu, cuda):
        assert torch.nn.functional.cosine_similarity(torch.from_numpy(cpu_emb), torch.from_numpy(cuda_emb)).min() > 0.999
        assert np.abs(cpu_prob - cuda_prob).max() < 1e-2


@pytest.mark.gpu
@needs_faiss_gpu
def test_faiss_gpu_search_finds_what_the_cpu_finds():
    rng = np.random.default_rng(0)
    vectors = index_module.normalise(rng.normal(size=(20_000, 64)).astype(np.float32))
    ids = np.arange(1, len(vectors) + 1)
    on_gpu = index_module.build_index(vectors, ids, "test", "track", "v")
    import faiss

    assert on_gpu.meta["device"] == "gpu"
    queries = vectors[:100]
    _, found = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, on_gpu.index).search(queries, 10)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10] + 1
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)]) > 0.99

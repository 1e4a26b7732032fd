"""The CNNs and the transfer classifier: the KL target, checkpoints, determinism, evaluation."""

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agf.ingest import collect, ingest
from agf.ingest.synth import write_corpus
from agf.models.cnn import INFERENCE_REVISION, ClipCNN, inference_copy, int8_available, kl_divergence, soft_cross_entropy
from agf.models.data import ClipFrames, PatchReader, patch_starts, patch_windows
from agf.models.factors import FactorParams, build_factors
from agf.errors import AgfError
from agf.models.train import TrainParams, all_tracks, fit_cnn, save_cnn
from agf.models import serving
from agf.models.serving import clip_outputs, forward_threads, load_cnn, models_clip_outputs, pick_precision
from agf.store import Store

QUICK = TrainParams(epochs=2, crops_per_track=2, batch_size=16, patience=2)
#: 8-bit inference where oneDNN sums 8-bit products exactly (a CPU with VNNI)
needs_int8 = pytest.mark.skipif(not int8_available(), reason="no exact 8-bit convolutions on this CPU")


@pytest.fixture(scope="module")
def trainable(tmp_path_factory) -> Store:
    """3 genres x 5 artists x 3 tracks of 6 s, ingested with fma, with mfcc and tags factors."""
    root = tmp_path_factory.mktemp("train")
    manifest = write_corpus(root / "corpus", genres=3, artists=5, tracks=3, seconds=6.0, seed=1)
    store = Store.open(root / "store", create=True)
    candidates, _ = collect(manifest.parent, manifest=manifest)
    ingest(store, candidates, features=("mfcc", "fma"), workers=2, quiet=True)
    build_factors(store, ["mfcc", "tags"], FactorParams(clusters=16, topics=4), quiet=True)
    store.close()
    return root / "store"


def test_the_soft_target_loss_has_the_gradients_of_the_kl_divergence():
    torch.manual_seed(0)
    target = torch.softmax(torch.randn(6, 40), dim=1)
    logits = torch.randn(6, 40, requires_grad=True)
    entropy = -(target * target.log()).sum(dim=1).mean()
    ce = soft_cross_entropy(logits, target)
    kl = kl_divergence(logits, target)
    assert torch.allclose(ce - kl, entropy, atol=1e-6)
    (grad_ce,) = torch.autograd.grad(ce, logits)
    (grad_kl,) = torch.autograd.grad(kl_divergence(logits, target), logits)
    assert torch.allclose(grad_ce, grad_kl, atol=1e-7)
    assert kl_divergence(target.log(), target).abs().item() < 1e-6  # zero when the network matches


def test_the_cnn_has_the_published_shape():
    model = ClipCNN(16).eval()
    x = torch.zeros(3, 1, 128, 43)
    assert model.embed(x).shape == (3, 256) and model(x).shape == (3, 16)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [
        (16, (5, 5)), (32, (3, 3)), (64, (3, 3)), (64, (3, 3)), (128, (3, 3)), (256, (3, 3)), (256, (1, 1))]


def _evaluation_model() -> ClipCNN:
    torch.manual_seed(0)
    model = ClipCNN(8)
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d)):
        norm.running_mean.uniform_(-0.5, 0.5)  # trained statistics, not the identity of a fresh layer
        norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_the_fast_inference_copy_computes_what_the_network_does():
    model = _evaluation_model()
    x = torch.randn(20, 1, 128, 43)
    fast = inference_copy(model)
    with torch.no_grad():
        assert torch.allclose(fast(x.contiguous(memory_format=torch.channels_last)), model(x), atol=1e-5)
        assert torch.allclose(fast.embed(x[:, :, :, :37]), model.embed(x[:, :, :, :37]), atol=1e-5)  # odd sizes too
    assert model.training is False and isinstance(model.features[0][1], torch.nn.BatchNorm2d)  # the original is untouched


@pytest.mark.parametrize("precision, within", [("bf16", 0.005), pytest.param("int8", 0.03, marks=needs_int8)])
def test_bfloat16_and_8_bit_inference_stay_within_their_bounds_and_do_not_depend_on_the_batch(precision, within):
    model = _evaluation_model()
    x = torch.randn(40, 1, 128, 43)
    fast = inference_copy(model, precision)
    with torch.no_grad():
        exact, approximate = model.embed(x), fast.embed(x.contiguous(memory_format=torch.channels_last))
        alone = torch.cat([fast.embed(x[i : i + 7].contiguous(memory_format=torch.channels_last)) for i in range(0, 40, 7)])
        odd = fast.embed(x[:, :, :, :37].contiguous(memory_format=torch.channels_last)), model.embed(x[:, :, :, :37])
    assert approximate.dtype == torch.float32
    assert (approximate - exact).abs().max() < within * exact.abs().max()
    assert torch.nn.functional.cosine_similarity(approximate, exact).min() > 0.9999
    assert torch.allclose(alone, approximate, atol=1e-5)  # a track's embedding is not moved by its batch-mates
    assert torch.nn.functional.cosine_similarity(*odd).min() > 0.9999  # odd sizes too


def _pytorch_pool_elu(x: torch.Tensor, pool: tuple[int, int] | None) -> torch.Tensor:
    """What the fused kernel stands for: PyTorch's float32 pooling and ELU, rounded to bfloat16."""
    x = x.float()
    return torch.nn.functional.elu(torch.nn.functional.max_pool2d(x, pool) if pool else x).to(torch.bfloat16)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to the bit (the sign of zero included), or NaN in both (whatever the payload)."""
    a, b = a.contiguous(), b.contiguous()
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(a.view(torch.int16)[~nan], b.view(torch.int16)[~nan])


@pytest.mark.parametrize("pool", [None, (2, 1), (2, 2)])
def test_fused_pooling_and_elu_give_pytorchs_float32_result_rounded_for_every_bfloat16_value(pool):
    from agf.models.fused import pool_elu

    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)  # NaNs and infinities too
    # 65,536 windows of 2 x 2, window i holding values i to i + 3: each value in each position once
    windows = torch.stack([every.roll(-k) for k in range(4)], dim=1).reshape(16, 16, 16, 16, 2, 2)
    x = windows.permute(0, 1, 2, 4, 3, 5).reshape(16, 16, 32, 32).contiguous(memory_format=torch.channels_last)
    assert _same_bits(pool_elu(x, pool), _pytorch_pool_elu(x, pool))


@given(st.integers(1, 5), st.sampled_from([1, 16, 32, 64]), st.integers(1, 9), st.integers(1, 9),
       st.sampled_from([None, (2, 1), (2, 2)]), st.floats(1e-3, 1e3), st.booleans())
def test_fused_pooling_and_elu_take_any_shape_and_layout(n, channels, height, width, pool, scale, channels_last):
    from agf.models.fused import pool_elu

    if pool and (height < pool[0] or width < pool[1]):
        return
    x = (torch.randn(n, channels, height, width) * scale).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    out = pool_elu(x, pool)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert _same_bits(out, _pytorch_pool_elu(x, pool))


@settings(deadline=None)  # each kind of table is compiled on its first example
@given(st.integers(1, 5), st.sampled_from([1, 16, 64]), st.integers(1, 9), st.integers(1, 9),
       st.sampled_from([None, (2, 1), (2, 2)]), st.sampled_from([np.uint8, np.float32]), st.booleans())
def test_pooling_quantized_codes_then_looking_them_up_takes_any_shape_and_layout(n, channels, height, width, pool,
                                                                               dtype, channels_last):
    from agf.models.fused import pool_lookup

    if pool and (height < pool[0] or width < pool[1]):
        return
    codes = torch.randint(0, 256, (n, channels, height, width), dtype=torch.uint8)
    codes = codes.contiguous(memory_format=torch.channels_last) if channels_last else codes
    table = np.random.default_rng(n).permutation(256).astype(dtype)  # any table: pooling comes first
    out = pool_lookup(codes, pool, table)
    pooled = torch.nn.functional.max_pool2d(codes.float(), pool).long() if pool else codes.long()
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, torch.from_numpy(table)[pooled])


@needs_int8
def test_an_8_bit_convolution_is_the_float_convolution_of_its_codes_rounded_to_its_output_codes():
    from agf.models.cnn import Int8Conv, uint8_codes

    torch.manual_seed(2)
    conv, norm = torch.nn.Conv2d(16, 32, 3, padding=1).eval(), torch.nn.BatchNorm2d(32).eval()
    norm.weight.data.uniform_(0.5, 2.0)
    norm.bias.data.uniform_(-1.0, 1.0)
    given = uint8_codes(-1.0, 5.0)
    layer = Int8Conv(conv, norm, None, given, (-4.0, 6.0), last=False)
    codes = torch.randint(0, 256, (4, 16, 9, 7), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    weights = torch.round(torch.nn.utils.fusion.fuse_conv_bn_eval(conv, norm).weight / layer.weight_scales[:, None, None, None])
    values = torch.nn.functional.conv2d(given[0] * (codes.double() - given[1]),
                                        (weights * layer.weight_scales[:, None, None, None]).double(),
                                        layer.bias.double(), padding=1)  # zero padding: the input's code for 0
    expected = torch.round(values / layer.output[0] + layer.output[1]).clamp(0, 255)
    difference = (layer.convolve(codes).double() - expected).abs()
    assert difference.max() <= 1 and (difference == 0).float().mean() > 0.99  # ties and float32 sums aside


@pytest.mark.parametrize("precision", ["fp32", "bf16", pytest.param("int8", marks=needs_int8)])
def test_forward_passes_side_by_side_on_the_cpus_threads_give_what_one_thread_gives(precision):
    rng = np.random.default_rng(5)
    clips = {t: rng.normal(-40, 10, size=(n, 128)).astype(np.float16) for t, n in zip(range(1, 30), rng.integers(20, 1400, 29))}
    torch.manual_seed(1)
    models = [(ClipCNN(k).eval(), PatchReader(ClipFrames(clips), 128, rng.normal(-40, 1, 128).astype(np.float32),
                                               rng.uniform(5, 15, 128).astype(np.float32))) for k in (4, 8, 3)]
    before = torch.get_num_threads()
    outputs = {}
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            outputs[threads] = models_clip_outputs(models, list(clips), torch.device("cpu"), batch_patches=16,
                                                   precision=precision)
            assert torch.get_num_threads() == threads  # PyTorch's own thread count is given back
    finally:
        torch.set_num_threads(before)
    for (one, one_p), (three, three_p) in zip(outputs[1], outputs[3]):
        assert np.array_equal(one, three) and np.array_equal(one_p, three_p)


def test_many_cores_run_at_most_sixteen_forward_passes_side_by_side_each_on_its_share_of_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(40)
    try:
        with forward_threads(torch.device("cpu")) as submit:
            inside = [submit(torch.get_num_threads).result() for _ in range(3)]
        assert serving.forward_width(torch.device("cpu")) == 16 and inside == [2, 2, 2]  # 40 // 16
        assert torch.get_num_threads() == 40
    finally:
        torch.set_num_threads(before)


def test_a_failing_forward_pass_on_a_forward_thread_is_raised_and_the_thread_count_given_back():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError), forward_threads(torch.device("cpu")) as submit:
            assert torch.get_num_threads() == 1
            submit(torch.mm, torch.ones(2, 3), torch.ones(2, 3)).result()  # shapes that do not multiply
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@given(st.integers(min_value=43, max_value=3000))
def test_inference_patches_see_every_frame_of_a_clip_once_but_at_its_end(n_frames):
    starts = patch_starts(n_frames)
    assert starts[0] == 0 and starts[-1] == n_frames - 43  # the last patch ends with the clip
    gaps = np.diff(starts)
    assert (gaps[:-1] == 43).all() and ((0 < gaps[-1:]) & (gaps[-1:] <= 43)).all()
    assert np.array_equal(np.unique(patch_windows(n_frames)), np.arange(n_frames))


def test_several_cnns_read_each_clip_once_and_give_what_each_gives_alone_and_what_the_plain_loop_gives():
    rng = np.random.default_rng(3)
    clips = {t: rng.normal(-40, 10, size=(n, 128)).astype(np.float16) for t, n in zip(range(1, 40), rng.integers(20, 1400, 39))}
    torch.manual_seed(0)
    models = [(ClipCNN(k).eval(), PatchReader(ClipFrames(clips), 128, rng.normal(-40, 1, 128).astype(np.float32),
                                               rng.uniform(5, 15, 128).astype(np.float32))) for k in (4, 8)]
    ids = list(clips)
    together = models_clip_outputs(models, ids, torch.device("cpu"), precision="fp32")
    for (model, reader), (embeddings, probabilities) in zip(models, together):
        alone = clip_outputs(model, reader, ids, torch.device("cpu"), precision="fp32")
        assert np.array_equal(alone[0], embeddings) and np.array_equal(alone[1], probabilities)
        with torch.no_grad():  # the straightforward loop: each clip's patches, one forward, the mean
            plain = np.stack([model.embed(torch.from_numpy(reader.patches(t)[:, None])).mean(dim=0).numpy() for t in ids])
        assert np.abs(plain - embeddings).max() < 1e-4 * np.abs(plain).max()
    assert [len(reader.patches(t)) for t in ids[:3]] == [len(patch_starts(max(43, len(clips[t])))) for t in ids[:3]]


@pytest.mark.parametrize("params", [[], {"seed": "x"}, {"seed": -1}, {"split": "nonsense"}, {"split": ["artist"]}])
def test_a_model_row_whose_split_cannot_be_drawn_again_is_a_warning_not_a_crash(trainable, tmp_path, params):
    from agf.app.evaluate import trained_on_test
    from agf.store.registry import save_model

    shutil.copytree(trainable, tmp_path / "store")
    with Store.open(tmp_path / "store", write=True) as store:
        model_id = save_model(store, "probe", "genre", b"weights", params, {}, "model.pt")
        tracks = all_tracks(store)
        (warning,) = trained_on_test(store, "probe", [model_id], tracks, [t["track_id"] for t in tracks])
        (missing,) = trained_on_test(store, "probe", ["no-such-model"], tracks, [t["track_id"] for t in tracks])
    assert warning.startswith(f"probe: cannot tell which tracks {model_id} was trained on (") and "\n" not in warning
    assert missing.startswith("probe: cannot tell which tracks no-such-model was trained on (no model 'no-such-model'")


def test_auto_precision_is_the_one_measured_faster_and_is_measured_once_per_inference_revision(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(serving, "_MEASURED", {})
    cpu = torch.device("cpu")
    assert pick_precision(cpu, "fp32") == "fp32" and pick_precision(cpu, "bf16") == "bf16"
    chosen = pick_precision(cpu)
    cache = tmp_path / "agf" / "precision.json"
    ((key, record),) = json.loads(cache.read_text()).items()
    assert key.endswith(f":inference {INFERENCE_REVISION}")
    speed = record["patches_per_s"]
    assert set(speed) == set(serving.arithmetics(cpu)) >= {"fp32", "bf16"}
    faster = "bf16" if speed["bf16"] >= serving.SPEED_MARGIN * speed["fp32"] else "fp32"
    if "int8" in speed:
        faster = "int8" if speed["int8"] >= serving.SPEED_MARGIN * speed[faster] else faster
    assert chosen == record["precision"] == faster
    written = cache.stat().st_mtime_ns
    monkeypatch.setattr(serving, "_MEASURED", {})  # a new process: reads what was measured, times nothing
    assert pick_precision(cpu) == chosen and cache.stat().st_mtime_ns == written
    # an agf whose inference arithmetic changed does not trust the old measurement: it times again
    monkeypatch.setattr(serving, "_MEASURED", {})
    monkeypatch.setattr(serving, "INFERENCE_REVISION", INFERENCE_REVISION + 1)
    pick_precision(cpu)
    assert len(json.loads(cache.read_text())) == 2
    with pytest.raises(AgfError, match="unknown precision 'fp16'; choose auto, fp32, bf16, int8"):
        pick_precision(cpu, "fp16")
    with pytest.raises(AgfError, match="int8 runs on the CPU only: choose fp32 or bf16"):
        pick_precision(torch.device("cuda"), "int8")
    # a PyTorch without oneDNN's 8-bit convolutions (an ARM build, say): not measured, not taken
    monkeypatch.setattr(serving, "int8_available", lambda: False)
    monkeypatch.setattr(serving, "_MEASURED", {})
    monkeypatch.setattr(serving, "INFERENCE_REVISION", INFERENCE_REVISION + 2)
    assert pick_precision(cpu) in ("fp32", "bf16")
    assert set(json.loads(cache.read_text())[serving.measured_key(cpu)]["patches_per_s"]) == {"fp32", "bf16"}
    with pytest.raises(AgfError, match="int8 runs on oneDNN's 8-bit convolutions summing exactly"):
        pick_precision(cpu, "int8")


@needs_int8
def test_a_reloaded_network_runs_on_8_bit_integers_as_the_trained_one_does(trainable):
    with Store.open(trainable, write=True) as store:
        model, spectra, config, metrics = fit_cnn(store, "agf:mfcc", QUICK, quiet=True)
        reloaded, reloaded_spectra, _ = load_cnn(store, save_cnn(store, model, spectra, config, metrics), torch.device("cpu"))
        tracks = [t["track_id"] for t in all_tracks(store)[:7]]
    quantized = [clip_outputs(m, r, tracks, torch.device("cpu"), precision="int8") for m, r in
                 ((model, spectra), (reloaded, reloaded_spectra))]
    exact = clip_outputs(model, spectra, tracks, torch.device("cpu"), precision="fp32")
    assert all(np.array_equal(a, b) for a, b in zip(*quantized))
    assert (np.abs(quantized[0][0] - exact[0]).max(axis=1) < 0.03 * np.abs(exact[0]).max(axis=1)).all()


_ON_THIS_CPU = """
import json, torch
from agf.errors import AgfError
from agf.models.cnn import int8_available
from agf.models.serving import pick_precision
try:
    pick_precision(torch.device("cpu"), "int8")
    asked = "int8"
except AgfError as exc:
    asked = str(exc)
print(json.dumps({"int8": int8_available(), "auto": pick_precision(torch.device("cpu")), "asked": asked}))
"""


def test_a_cpu_whose_8_bit_sums_would_saturate_is_never_given_int8(tmp_path):
    """Without 8-bit dot products (VNNI), oneDNN adds pairs of products in 16 bits, which
    saturate at the codes agf uses; oneDNN capped at AVX2 runs as such a CPU would."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "XDG_CACHE_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", _ON_THIS_CPU], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["int8"] is False and seen["auto"] in ("fp32", "bf16")
    assert seen["asked"] == "--precision int8 runs on oneDNN's 8-bit convolutions summing exactly, which this " \
                            "machine's PyTorch lacks: choose fp32 or bf16"


def test_an_agf_network_learns_soft_targets_and_its_checkpoint_reloads_identically(trainable):
    with Store.open(trainable, write=True) as store:
        model, spectra, config, metrics = fit_cnn(store, "agf:mfcc", QUICK, quiet=True)
        assert config["classes"] == [f"factor {i}" for i in range(4)] and np.isfinite(metrics["val_loss"])
        model_id = save_cnn(store, model, spectra, config, metrics)
    reloaded, reloaded_spectra, _ = load_cnn(store, model_id, torch.device("cpu"))
    tracks = [t["track_id"] for t in all_tracks(store)[:7]]
    before = clip_outputs(model.cpu(), spectra, tracks, torch.device("cpu"))
    after = clip_outputs(reloaded, reloaded_spectra, tracks, torch.device("cpu"))
    for a, b in zip(before, after):
        assert np.array_equal(a, b)
    assert np.allclose(after[1].sum(axis=1), 1, atol=1e-5)
    # the ranges 8-bit inference quantizes over were measured on training patches, and kept with the weights
    assert model.activation_ranges.shape == (7, 2) and torch.equal(reloaded.activation_ranges, model.activation_ranges)
    low, high = model.activation_ranges.unbind(dim=1)
    assert (low < high).all() and (high > 0).all()
    row = store.query("SELECT kind, target FROM models WHERE model_id = ?", [model_id]).to_pylist()
    assert row == [{"kind": "cnn", "target": "agf:mfcc"}]


def test_training_on_the_cpu_is_deterministic(trainable, cli):
    runs = [cli("train", "--target", "genre", "--epochs", "1", "--crops-per-track", "2", "--seed", "5",
                "--store", trainable, "--json", "--quiet") for _ in range(2)]
    assert all(r.exit_code == 0 for r in runs), runs[0].output
    first, second = (json.loads(r.stdout)[0] for r in runs)
    assert first["model_id"] == second["model_id"]  # the checkpoint is named by its sha256
    assert first["val_loss"] == second["val_loss"] and first["device"] == "cpu"


def test_the_whole_learning_half_runs_and_is_evaluated_side_by_side(trainable, cli, tmp_path):
    for args in (["train", "--target", "all", "--epochs", "1", "--crops-per-track", "2"], ["embed"],
                 ["train", "--target", "transfer", "--epochs", "30"]):
        out = cli(*args, "--store", trainable, "--quiet")
        assert out.exit_code == 0, out.output
    store = Store.open(trainable)
    targets = store.query("SELECT DISTINCT target FROM models WHERE kind = 'cnn' ORDER BY 1")["target"].to_pylist()
    assert targets == ["agf:mfcc", "agf:tags", "genre"]
    assert store.query("SELECT count(DISTINCT model_id) AS m, count(*) AS n FROM embeddings").to_pylist()[0]["n"] >= 3 * 45
    assert store.sql("SELECT typeof(vector) AS t FROM embeddings LIMIT 1").to_pylist() == [{"t": "FLOAT[256]"}]
    predicted = store.query("SELECT count(DISTINCT track_id) AS n, min(rank) AS lo, max(rank) AS hi FROM predictions").to_pylist()[0]
    assert predicted == {"n": 9, "lo": 1, "hi": 3}  # 3 test artists x 3 tracks, 3 genres ranked
    out = cli("evaluate", "--out", tmp_path / "report", "--store", trainable, "--json", "--full")
    report = json.loads(out.stdout)
    assert report["test_artists_also_in_training"] == 0 and report["test_tracks"] == 9
    names = [n.split(" (")[0] for n in report["models"]]
    assert names == ["genre CNN", "transfer MLP", "baseline: logistic regression on fma"]
    for scores in report["models"].values():
        assert 0 <= scores["accuracy"] <= 1 and scores["log_loss"] > 0 and 0 <= scores["ece"] <= 1
        assert sum(map(sum, scores["confusion"])) == 9 and sum(scores["reliability"]["count"]) == 9
    assert (tmp_path / "report" / "confusion.png").stat().st_size > 1000
    assert (tmp_path / "report" / "reliability.png").stat().st_size > 1000
    # 9 test tracks cannot rank models: said in the report and on stderr, not left to the reader
    assert report["warnings"] == ["only 9 test tracks (fewer than 30): the scores are too noisy to rank the models"]
    assert report["support"] == {genre: 3 for genre in report["classes"]}
    assert "warning: only 9 test tracks" in out.stderr
    models = store.query("SELECT kind, target, metrics FROM models WHERE target = 'genre'").to_pylist()
    assert all(json.loads(m["metrics"])["temperature"] > 0 for m in models)  # both genre models are calibrated
    random = cli("evaluate", "--split", "random", "--out", tmp_path / "r2", "--store", trainable, "--json", "--full")
    random = json.loads(random.stdout)
    assert random["test_artists_also_in_training"] > 0  # said plainly, not hidden
    # the models were trained on the artist split: on a random split they have seen test tracks, and it says so
    seen = [w for w in random["warnings"] if "were in the training or validation split" in w]
    assert {w.split(":")[0] for w in seen} == {n for n in random["models"] if not n.startswith("baseline")}
    assert all("--split auto --seed 0" in w for w in seen)
    exact = cli("evaluate", "--precision", "fp32", "--out", tmp_path / "r3", "--store", trainable, "--json", "--full")
    exact = json.loads(exact.stdout)
    assert exact["precision"] == "fp32" and report["precision"] in ("fp32", "bf16", "int8")
    assert exact["models"]["baseline: logistic regression on fma"] == report["models"]["baseline: logistic regression on fma"]


@pytest.mark.parametrize("command, message", [
    (["train", "--target", "genre"], "no track has a genre to learn from: genres come from a manifest's genre column, "
                                     "FMA's tracks.csv or the files' own genre tags"),
    (["factors", "build"], "mfcc: factors need tracks of 2 artists or more; the store has 1"),
])
def test_a_folder_of_untagged_files_says_what_each_step_lacks(small_corpus, tmp_path, cli, command, message):
    """A newcomer's first folder: files without tags, so one artist ('unknown') and no genre."""
    (tmp_path / "mine").mkdir()
    for clip in sorted(small_corpus.parent.glob("audio/*/*.flac"))[:3]:
        (tmp_path / "mine" / clip.name).write_bytes(clip.read_bytes())
    assert cli("ingest", tmp_path / "mine", "--quiet", "--store", tmp_path / "s").exit_code == 0
    out = cli(*command, "--store", tmp_path / "s")
    assert out.exit_code == 1 and out.output.strip() == f"Error: {message}"


def test_too_few_labelled_tracks_is_a_clear_error(small_store, tmp_path, cli):
    import shutil

    root = tmp_path / "s"
    shutil.copytree(small_store, root)
    out = cli("train", "--target", "genre", "--store", root)
    assert out.exit_code == 1
    assert out.output.strip() == ("Error: too few labelled tracks to train genre: 9 in the training split "
                                  "covering 3 class(es); need 10 tracks and 2 classes")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc")
def test_embedding_a_long_run_of_clips_keeps_none_of_their_files_mapped(trainable):
    with Store.open(trainable) as store:
        spectra = PatchReader.of_store(store, np.zeros(128, np.float32), np.ones(128, np.float32))
        clip_outputs(ClipCNN(4), spectra, [t["track_id"] for t in all_tracks(store)], torch.device("cpu"))
        gc.collect()
        mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if str(store.root) in line]
    assert mapped == []  # each clip's frames were read once and let go: memory does not grow with the run


def test_the_cnn_trainer_is_an_estimator_on_clips_held_in_memory():
    from agf.models.data import ClipFrames
    from agf.models.train import ClipCNNTrainer

    rng = np.random.default_rng(0)
    bands = np.zeros((2, 128))
    bands[0, :40], bands[1, 80:] = 30, 30  # two kinds of clip: loud low bands, or loud high bands
    clips = {t: (rng.normal(-40, 3, size=(200, 128)) + bands[t % 2]).astype(np.float16) for t in range(40)}
    y = np.eye(2, dtype=np.float32)[[t % 2 for t in clips]]
    reader = PatchReader(ClipFrames(clips), 128)
    trainer = ClipCNNTrainer(TrainParams(epochs=3, crops_per_track=4, batch_size=16), calibrate=True)
    trainer.fit(reader, list(range(30)), y[:30], list(range(30, 40)), y[30:])
    probabilities = trainer.predict_proba(reader, list(range(30, 40)))
    assert probabilities.shape == (10, 2) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert (probabilities.argmax(axis=1) == np.arange(30, 40) % 2).all()
    assert trainer.transform(reader, [0, 1]).shape == (2, 256) and trainer.temperature_ > 0


@pytest.mark.parametrize("refit", [True, False])
def test_the_transfer_mlp_is_refit_on_the_validation_tracks_it_stopped_on_unless_asked_not_to(trained, tmp_path, refit):
    from agf.models.data import assign_splits
    from agf.models.serving import transfer_probabilities
    from agf.models.transfer import TransferParams, train_transfer
    from agf.store.registry import model_row

    shutil.copytree(trained["store"], tmp_path / "store")
    with Store.open(tmp_path / "store", write=True) as store:
        kept = train_transfer(store, TransferParams(epochs=40, weight_decay=1e-5, refit=False), quiet=True)["model_id"]
        chosen = train_transfer(store, TransferParams(epochs=40, weight_decay=1e-5, refit=refit), quiet=True)["model_id"]
        tracks = all_tracks(store)
        splits = assign_splits(tracks, "auto", 0)
        validation = [t for t in tracks if splits[t["track_id"]] == "validation" and t["genre_top"]]
        truth = [t["genre_top"] for t in validation]

        def validation_loss(model_id: str) -> float:
            classes, p = transfer_probabilities(store, model_id, [t["track_id"] for t in validation])
            return float(-np.mean(np.log(p[np.arange(len(truth)), [classes.index(g) for g in truth]])))

        metrics = json.loads(model_row(store, chosen)["metrics"])
        assert validation and metrics["fitted_on"] == ("training and validation tracks" if refit else "training tracks")
        if refit:  # it has learnt the validation tracks, which the training-only fit only stopped on
            assert validation_loss(chosen) < validation_loss(kept)
        else:  # the training-only fit, as the authors train it: the same model again
            assert validation_loss(chosen) == validation_loss(kept)

"""The CNN of the winning WWW 2018 entry (docs/METHOD.md), one architecture for every target.

Input: a patch of the standardised log-mel spectrogram, (batch, 1, 128 mel bands, 43 frames).
conv 5x5x16 -> max-pool (2, 1); conv 3x3 with 32, 64, 64, 128 filters, each followed by 2x2
max-pooling; conv 3x3x256; conv 1x1x256; ELU after every convolution, batch normalisation on
each, dropout 0.1 after the pooled blocks; global average pooling -> dense 256 (batch norm,
ELU) = the embedding -> dropout 0.5 -> dense to the target's classes (softmax in the loss).
"""

import copy
import functools

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

PATCH_FRAMES = 43  # about 1 s at 22,050 Hz, hop 512
EMBEDDING_DIM = 256
#: The revision of :func:`inference_copy`'s arithmetic. Which precision runs faster is measured
#: once per machine and revision (agf.models.serving.measured_precision), so a change that makes
#: one of them faster is measured again. 2: pooling and ELU fused in bfloat16 on the CPU; 3: a
#: CPU's threads each run whole forward passes (agf.models.serving.forward_threads); 4: 8-bit
#: integer convolutions ('int8') among the measured.
INFERENCE_REVISION = 4


def _block(c_in: int, c_out: int, kernel: int, pool: tuple[int, int] | None, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), nn.BatchNorm2d(c_out), nn.ELU()]
    if pool:
        layers.append(nn.MaxPool2d(pool))
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class ClipCNN(nn.Module):
    """The CNN; ``n_outputs`` is the number of genres, or of topics for an AGF target."""

    def __init__(self, n_outputs: int, n_mels: int = 128):
        super().__init__()
        self.n_outputs, self.n_mels = n_outputs, n_mels
        self.features = nn.Sequential(
            _block(1, 16, 5, (2, 1), 0.0),
            _block(16, 32, 3, (2, 2), 0.1),
            _block(32, 64, 3, (2, 2), 0.1),
            _block(64, 64, 3, (2, 2), 0.1),
            _block(64, 128, 3, (2, 2), 0.1),
            _block(128, 256, 3, None, 0.0),
            _block(256, 256, 1, None, 0.0),
        )
        self.embedding = nn.Sequential(nn.Linear(256, EMBEDDING_DIM), nn.BatchNorm1d(EMBEDDING_DIM), nn.ELU())
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(EMBEDDING_DIM, n_outputs))
        #: (blocks, 2): each convolution's output range on its training patches, for 8-bit
        #: inference (:func:`measure_ranges`); None until measured
        self.activation_ranges: torch.Tensor | None = None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patches (batch, 1, n_mels, frames) -> embeddings (batch, 256)."""
        return self.embedding(self.features(x).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patches -> logits (batch, n_outputs)."""
        return self.head(self.embed(x))


class _PairMaxPool(nn.Module):
    """Max-pooling over pairs of rows, (2, 1), or of columns then rows, (2, 2): the same as
    ``nn.MaxPool2d``, and faster on channels-last CPU tensors (~3x for (2, 1)), where PyTorch's
    kernel also computes indices it does not need. Columns go first: a channels-last row holds
    them side by side, and the rows' pass then reads half as much (~1.5x for (2, 2))."""

    def __init__(self, columns: bool):
        super().__init__()
        self.columns = columns

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.columns:
            columns = x.shape[3] // 2 * 2
            x = torch.maximum(x[:, :, :, 0:columns:2], x[:, :, :, 1:columns:2])
        rows = x.shape[2] // 2 * 2
        return torch.maximum(x[:, :, 0:rows:2], x[:, :, 1:rows:2])


class _PoolELU(nn.Module):
    """Max-pooling (``pool``: (2, 1), (2, 2) or None) then ELU, on bfloat16 activations: one
    compiled pass on the CPU (:mod:`agf.models.fused`, ~3x faster than PyTorch's passes there);
    PyTorch's pooling and ELU on other devices."""

    def __init__(self, pool: tuple[int, int] | None):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            from agf.models.fused import pool_elu  # numba is loaded by bfloat16 CPU inference only

            return pool_elu(x, self.pool)
        if self.pool is not None:
            x = nn.functional.max_pool2d(x, self.pool)
        return nn.functional.elu(x, inplace=True)


class _BFloat16(nn.Module):
    """Runs ``inner`` in bfloat16 (its weights converted once) and hands back float32."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.bfloat16)).float()


#: 8-bit inference: each convolution's output is quantized over its channels' mean plus or minus
#: this many standard deviations, measured on training patches (the lowest and highest over the
#: channels), and ...
INT8_SIGMAS = 6.0
#: ... a standardised input patch over plus or minus this many standard deviations of each band.
#: Both measured on real clips (docs/METHOD.md).
INT8_INPUT_SIGMAS = 8.0


@torch.no_grad()
def measure_ranges(model: ClipCNN, patches: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Each convolution's output range for 8-bit inference: its channels' mean plus or minus
    :data:`INT8_SIGMAS` standard deviations over ``patches``, the lowest and the highest.

    Parameters
    ----------
    model : ClipCNN
        In evaluation mode.
    patches : torch.Tensor, shape (n, 1, n_mels, frames), float32
        Standardised patches of the clips it was trained on.

    Returns
    -------
    torch.Tensor, shape (n_blocks, 2), float32
        (low, high) of each block's convolution and batch norm, before ELU.
    """
    sums = [torch.zeros(3, block[0].out_channels, dtype=torch.float64) for block in model.features]
    for start in range(0, len(patches), chunk):
        x = patches[start : start + chunk]
        for block, (count, total, squares) in zip(model.features, sums):
            y = block[1](block[0](x))
            wide = y.double()  # sums over a whole sample, in float64
            count += y.shape[0] * y.shape[2] * y.shape[3]
            total += wide.sum(dim=(0, 2, 3)).cpu()
            squares += (wide * wide).sum(dim=(0, 2, 3)).cpu()
            x = block[2:](y)
    ranges = []
    for count, total, squares in sums:
        mean = total / count
        ranges.append(_span(mean, (squares / count - mean * mean).clamp(min=0).sqrt()))
    return torch.tensor(ranges, dtype=torch.float32)


@torch.no_grad()
def _batch_norm_ranges(features: nn.Sequential) -> torch.Tensor:
    """:func:`measure_ranges` as the batch norms' own statistics tell it: each channel's output
    has their mean (bias) and standard deviation (weight) on the data they saw in training; far
    off for a briefly trained network, whose running statistics lag."""
    return torch.tensor([_span(block[1].bias, block[1].weight.abs()) for block in features])


def _span(mean: torch.Tensor, std: torch.Tensor) -> list[float]:
    """[lowest, highest] over the channels of their ``mean`` plus or minus :data:`INT8_SIGMAS` ``std``."""
    return [float((mean - INT8_SIGMAS * std).min()), float((mean + INT8_SIGMAS * std).max())]


def uint8_codes(low: float, high: float) -> tuple[float, int]:
    """The scale and zero point of uint8 codes spanning [low, high] (widened to hold 0 exactly)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-6) / 255
    return scale, int(min(255, max(0, round(-low / scale))))


class Int8Conv(nn.Module):
    """A convolution (batch norm folded in) on 8-bit integers, then its max-pooling and ELU.

    oneDNN computes it from uint8 input codes and int8 weights (one scale per output channel),
    with int32 sums, and writes each output as a uint8 code over ``output``, its range
    (:func:`measure_ranges`); pooling and ELU are then one table lookup per pooled code
    (:func:`agf.models.fused.pool_lookup`), which gives the next layer's codes, or, after the
    last convolution, float32 values.

    Parameters
    ----------
    conv, batch_norm : nn.Conv2d, nn.BatchNorm2d
        A block's convolution and batch norm, in evaluation mode.
    pool : (2, 1), (2, 2) or None
        The block's max-pooling.
    given : (float, int)
        Scale and zero point of the input codes (:func:`uint8_codes`).
    output : (float, float)
        The range of the convolution's outputs, before ELU.
    last : bool
        Whether the block is the last: its table gives float32 values, not codes.
    """

    def __init__(self, conv: nn.Conv2d, batch_norm: nn.BatchNorm2d, pool: tuple[int, int] | None,
                 given: tuple[float, int], output: tuple[float, float], last: bool):
        super().__init__()
        fused = fuse_conv_bn_eval(conv, batch_norm)
        weight = fused.weight.detach().float()
        self.weight_scales = (weight.abs().amax(dim=(1, 2, 3)) / 127).clamp(min=1e-12)
        self.weight_zeros = torch.zeros(len(self.weight_scales), dtype=torch.long)
        codes = torch.round(weight / self.weight_scales[:, None, None, None]).clamp(-127, 127).to(torch.int8)
        self.bias, self.pool, self.given, self.padding = fused.bias.detach().float(), pool, given, list(conv.padding)
        self.packed = torch.ops.onednn.qconv_prepack(codes, self.weight_scales, given[0], given[1], [1, 1], self.padding,
                                                     [1, 1], 1, None)
        # below -8, ELU is within 0.0004 of -1: codes are spent on the rest of the range
        self.output = uint8_codes(max(output[0], -8.0), output[1])
        values = nn.functional.elu(self.output[0] * (torch.arange(256, dtype=torch.float64) - self.output[1]))
        # the next layer's codes on the same grid, shifted to hold ELU's least value: ELU keeps a
        # positive value as it is, so those codes move by a whole number and are not rounded again
        self.gives = self.output[0], int(round(-float(values.min()) / self.output[0]))
        table = values if last else torch.round(values / self.gives[0] + self.gives[1]).clamp(0, 255)
        self.table = table.to(torch.float32 if last else torch.uint8).numpy()

    def convolve(self, codes: torch.Tensor) -> torch.Tensor:
        """Input codes (n, c_in, h, w) uint8 -> the convolution's output codes (n, c_out, h, w)."""
        return torch.ops.onednn.qconv2d_pointwise(
            codes, self.given[0], self.given[1], self.packed, self.weight_scales, self.weight_zeros, self.bias, [1, 1],
            self.padding, [1, 1], 1, self.output[0], self.output[1], None, "none", [], "")

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        from agf.models.fused import pool_lookup  # numba is loaded by CPU inference only

        return pool_lookup(self.convolve(codes), self.pool, self.table)


@functools.cache
def int8_available() -> bool:
    """Whether this machine's PyTorch has oneDNN's 8-bit convolutions, which
    ``precision='int8'`` runs on, and they sum exactly.

    Tried on the largest codes rather than read off a CPU flag: without 8-bit dot products
    (VNNI), oneDNN may add pairs of products into 16 bits, which saturate at the full ranges
    :class:`Int8Conv` uses (255 x 127 x 2 > 32,767).
    """
    channels = 64
    try:
        packed = torch.ops.onednn.qconv_prepack(torch.full((1, channels, 1, 1), 127, dtype=torch.int8), torch.ones(1),
                                                1.0, 0, [1, 1], [0, 0], [1, 1], 1, None)
        total = torch.ops.onednn.qconv2d_pointwise(
            torch.full((1, channels, 1, 1), 255, dtype=torch.uint8).contiguous(memory_format=torch.channels_last),
            1.0, 0, packed, torch.ones(1), torch.zeros(1, dtype=torch.long), None, [1, 1], [0, 0], [1, 1], 1, 1.0, 0,
            torch.float32, "none", [], "")
    except (AttributeError, NotImplementedError, RuntimeError):
        return False
    return float(total.flatten()[0]) == 255 * 127 * channels  # 2,072,640: exact in float32


class _Int8Features(nn.Module):
    """The convolutional blocks on 8-bit integers (:class:`Int8Conv`): float32 patches in,
    float32 activations of the last block out. ``ranges`` (blocks, 2) are each convolution's
    output range (:func:`measure_ranges`); without them, the batch norms' statistics."""

    def __init__(self, features: nn.Sequential, ranges: torch.Tensor | None):
        super().__init__()
        ranges = (_batch_norm_ranges(features) if ranges is None else ranges).tolist()
        self.given = uint8_codes(-INT8_INPUT_SIGMAS, INT8_INPUT_SIGMAS)
        given, self.layers = self.given, nn.ModuleList()
        for i, (block, output) in enumerate(zip(features, ranges)):
            pool = next((tuple(m.kernel_size) for m in block if isinstance(m, nn.MaxPool2d)), None)
            self.layers.append(Int8Conv(block[0], block[1], pool, given, output, last=i == len(features) - 1))
            given = self.layers[-1].gives

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, zero = self.given
        codes = torch.round(x / scale + zero).clamp_(0, 255).to(torch.uint8).contiguous(memory_format=torch.channels_last)
        for layer in self.layers:
            codes = layer(codes)
        return codes


def inference_copy(model: ClipCNN, precision: str = "fp32") -> ClipCNN:
    """An evaluation-mode copy rearranged for speed, computing the same function as ``model.eval()``.

    Each batch norm is folded into its convolution; ELU moves after max-pooling (ELU is
    increasing, so max and ELU commute exactly, and ELU then runs on a quarter of the values);
    dropout, a no-op in evaluation, is dropped; tensors are channels-last (oneDNN's layout).
    Together about 2.5x faster on CPU; outputs agree to float rounding (~1e-7). Inputs should be
    ``contiguous(memory_format=torch.channels_last)``.

    ``precision='bf16'`` runs the convolutions in bfloat16 (float32 accumulation), each one's
    pooling and ELU fused into one pass on the CPU (:mod:`agf.models.fused`), and the pooling
    to the embedding in float32: ~1.9x faster again on a CPU with AVX512-BF16, with embeddings
    that move by ~0.2-0.5 % of their scale (cosine similarity > 0.999).

    ``precision='int8'`` runs every convolution on 8-bit integers (:class:`Int8Conv`, oneDNN on
    the CPU): faster again where the CPU has 8-bit dot products (AVX512-VNNI, AVX-VNNI), with
    embeddings that move by ~0.5-2 % (cosine similarity > 0.999 on real clips).
    """
    fused = copy.deepcopy(model).eval()
    if precision == "int8":
        fused.features = _Int8Features(fused.features, model.activation_ranges)
        return fused
    for block in fused.features:
        conv, batch_norm, pool = block[0], block[1], next((m for m in block if isinstance(m, nn.MaxPool2d)), None)
        window = None if pool is None else tuple(pool.kernel_size)
        if precision == "bf16":
            after = [_PoolELU(window)]
        else:
            after = ([] if pool is None else [_PairMaxPool(columns=window == (2, 2))]) + [nn.ELU(inplace=True)]
        layers = [fuse_conv_bn_eval(conv, batch_norm)] + after
        block._modules.clear()
        for i, layer in enumerate(layers):
            block.add_module(str(i), layer)
    fused = fused.to(memory_format=torch.channels_last)
    if precision == "bf16":
        fused.features = _BFloat16(fused.features)
    return fused


class TransferMLP(nn.Module):
    """Frozen CNN embeddings, concatenated -> dropout 0.5 -> dense 1024 (ELU) -> dropout 0.5 -> genres."""

    def __init__(self, n_inputs: int, n_outputs: int, hidden: int = 1024):
        super().__init__()
        self.n_inputs, self.n_outputs, self.hidden = n_inputs, n_outputs, hidden
        self.net = nn.Sequential(nn.Dropout(0.5), nn.Linear(n_inputs, hidden), nn.ELU(), nn.Dropout(0.5), nn.Linear(hidden, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against target distributions (batch, classes).

    For soft AGF targets it differs from KL(target || softmax) only by the targets' entropy, so
    its gradients are the KL divergence's (docs/METHOD.md); for one-hot targets it is the usual loss.
    """
    return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def kl_divergence(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean KL(target || softmax(logits)) per track, in nats."""
    logp = torch.log_softmax(logits, dim=1)
    safe = torch.where(target > 0, target, torch.ones_like(target))
    return (target * (torch.log(safe) - logp)).sum(dim=1).mean()

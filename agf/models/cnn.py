"""The CNN of the winning WWW 2018 entry (docs/METHOD.md), one architecture for every target.

Input: a patch of the standardised log-mel spectrogram, (batch, 1, 128 mel bands, 43 frames).
conv 5x5x16 -> max-pool (2, 1); conv 3x3 with 32, 64, 64, 128 filters, each followed by 2x2
max-pooling; conv 3x3x256; conv 1x1x256; ELU after every convolution, batch normalisation on
each, dropout 0.1 after the pooled blocks; global average pooling -> dense 256 (batch norm,
ELU) = the embedding -> dropout 0.5 -> dense to the target's classes (softmax in the loss).
"""

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

PATCH_FRAMES = 43  # about 1 s at 22,050 Hz, hop 512
EMBEDDING_DIM = 256
#: The revision of :func:`inference_copy`'s arithmetic. Which precision runs faster is measured
#: once per machine and revision (agf.models.serving.measured_precision), so a change that makes
#: one of them faster is measured again. 2: pooling and ELU fused in bfloat16 on the CPU; 3: a
#: CPU's threads each run whole forward passes (agf.models.serving.forward_threads).
INFERENCE_REVISION = 3


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
    """
    fused = copy.deepcopy(model).eval()
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

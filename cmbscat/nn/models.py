"""Rotation-invariant spherical CNN classifiers made of DISCO convolutions.

The hybrid model and the paper's baseline are the same kind of network: a stack of
DISCO convolutions (isotropic filters, hence equivariant to every rotation up to
discretisation error), batch normalisation and a pointwise nonlinearity, halving
nside at each stage, then rotation-invariant pooling over the sphere (the mean and
the standard deviation of each channel over pixels: HEALPix pixels have equal
area) and a small MLP that outputs one logit (non-Gaussian vs Gaussian). They
differ in their input: scattering coefficients at low nside for the hybrid, the
raw map cut to a low band limit for the baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from cmbscat.nn.disco import DiscoConvS2
from cmbscat.nn.distributed import GlobalBatchDropout


class DiscoBlock(nn.Module):
    """DISCO convolution (nside_in -> nside_out) + batch norm + GELU, on (batch, C, npix) RING."""

    def __init__(self, in_channels: int, out_channels: int, nside_in: int, nside_out: int,
                 kernel_shape: int | tuple[int, int] = 4):
        super().__init__()
        self.conv = DiscoConvS2(in_channels, out_channels, nside_in, nside_out,
                                kernel_shape=kernel_shape, bias=False)
        self.norm = nn.BatchNorm1d(out_channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class SphericalClassifier(nn.Module):
    """DISCO CNN -> invariant pooling -> MLP -> one logit.

    Parameters
    ----------
    in_channels : input channels (scattering paths, or 1 for a raw map).
    nside : input HEALPix resolution (RING ordering, npix = 12 nside^2).
    widths : output channels of successive stages; each stage after the first halves
        nside while nside > ``nside_min``.
    kernel_shape : DISCO basis (int: isotropic, n radial functions).
    hidden : width of the MLP's hidden layer.
    dropout : dropout before the last layer (its mask drawn per global batch, so that
        data-parallel training drops what one process would: :class:`GlobalBatchDropout`).
    n_outputs : 1, a logit (classification); 2, a mean and a log standard deviation
        (regression of f_NL with a Gaussian likelihood, :mod:`cmbscat.experiment.fnl_estimators`).
    """

    def __init__(self, in_channels: int, nside: int, widths=(32, 32, 64), kernel_shape=4,
                 nside_min: int = 4, hidden: int = 64, dropout: float = 0.1, n_outputs: int = 1):
        super().__init__()
        blocks, c, ns = [], in_channels, nside
        for stage, width in enumerate(widths):
            ns_out = ns // 2 if stage > 0 and ns > nside_min else ns
            blocks.append(DiscoBlock(c, width, ns, ns_out, kernel_shape))
            c, ns = width, ns_out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Linear(2 * c, hidden), nn.GELU(), GlobalBatchDropout(dropout),
                                  nn.Linear(hidden, n_outputs))
        self.nside_in, self.nside_final, self.n_outputs = nside, ns, n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_channels, 12 nside^2) -> logits (batch,), or (batch, n_outputs)
        when n_outputs > 1."""
        h = self.features(x)
        pooled = torch.cat([h.mean(dim=-1), h.std(dim=-1)], dim=1)  # invariant to rotations
        out = self.head(pooled)
        return out.squeeze(-1) if self.n_outputs == 1 else out


MODEL_SETTINGS = {
    # name: (input, description)
    "hybrid": "scattering coefficients -> DISCO CNN",
    "baseline": "raw map at low resolution (lmax 127, nside 64) -> DISCO CNN",
}


def build_model(kind: str, in_channels: int, nside: int, n_outputs: int = 1) -> SphericalClassifier:
    """The network for ``kind`` ("hybrid" or "baseline") on inputs (batch, in_channels, npix);
    ``n_outputs`` 1 for a classifier (a logit), 2 for the f_NL regression (mean, log sigma)."""
    if kind == "hybrid":
        return SphericalClassifier(in_channels, nside, widths=(64, 64, 64), nside_min=4,
                                   n_outputs=n_outputs)
    if kind == "baseline":
        return SphericalClassifier(in_channels, nside, widths=(16, 32, 32, 64, 64), nside_min=4,
                                   n_outputs=n_outputs)
    raise ValueError(f"unknown model {kind!r}")


def recompute_batch_norm(model: nn.Module, batches) -> None:
    """Replace the running statistics of every BatchNorm layer of ``model`` by their
    exact average over ``batches`` (an iterable of input tensors, the training batches),
    computed with the current weights ("precise BN"). Dropout is off during the pass;
    no gradients; the model is left in eval mode with the layers' momentum restored."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
        m.train()
    try:
        with torch.no_grad():
            for xb in batches:
                model(xb)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()

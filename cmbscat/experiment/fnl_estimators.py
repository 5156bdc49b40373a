"""Estimators of f_NL with a predicted error (DESIGN.md, "Estimating f_NL").

Every estimator here maps one map's inputs to a mean and a standard deviation of
f_NL (dimensionless, the local-model amplitude of :mod:`cmbscat.sky.nongaussian`):

* the networks (hybrid, baseline) with two outputs, a mean and a log standard
  deviation in standardised target units (:class:`TargetScaling`), trained with the
  Gaussian negative log-likelihood (:func:`gaussian_nll`);
* :class:`FeatureRegressor`, the same likelihood on a classical statistic's features
  (one-point, Minkowski, binned C_l, the cubic statistic) through a small MLP;
* :class:`CubicFisherEstimator`, the anchor: the cubic statistic S normalised by its
  Fisher information F, f_NL = (T_CMB / 3) S / F with sigma = (T_CMB / 3) / sqrt(F).
  Nothing is fitted: F is the exact full-sky Fisher information at the file's band
  limit, and E[S] = a F + O(a^3) makes it unbiased to that order; no unbiased
  estimator has a smaller sigma at f_NL = 0 (the Cramer-Rao bound).

The fitted estimators' errors are calibrated on the validation split
(:func:`calibration_factor`): every predicted sigma is multiplied by the one factor
that makes the validation maps' mean squared pull ((true - mean) / sigma)^2 equal 1.
"""

from __future__ import annotations

import math

import numpy as np

from cmbscat.sky.nongaussian import T_CMB_UK

#: The networks' log sigma (standardised units) is clamped to this range in the loss:
#: a collapsed or exploding variance would otherwise dominate a batch.
LOG_SIGMA_BOUNDS = (-7.0, 5.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_nll(output, target, reduction: str = "mean"):
    """Gaussian negative log-likelihood of ``target`` (torch, (batch,)) under ``output``.

    output : torch tensor (batch, 2): mean and log standard deviation, both in the
        standardised units of ``target``.
    reduction : "mean" or "sum" over the batch. Returns a scalar tensor (nats per map
        for "mean"), including the constant 0.5 log(2 pi).
    """
    mean = output[..., 0]
    log_sigma = output[..., 1].clamp(*LOG_SIGMA_BOUNDS)
    nll = 0.5 * ((target - mean) * (-log_sigma).exp()) ** 2 + log_sigma + _HALF_LOG_2PI
    return nll.sum() if reduction == "sum" else nll.mean()


class TargetScaling:
    """Standardisation of f_NL targets by the training split's mean and standard deviation.

    ``standardise(fnl)`` gives the networks' targets; ``to_fnl(output)`` turns a
    network's (N, 2) output (mean, log sigma; standardised) into (mean, sigma) in f_NL.
    """

    def __init__(self, mean: float, std: float):
        self.mean, self.std = float(mean), float(std) if std > 0 else 1.0

    @classmethod
    def fit(cls, fnl: np.ndarray) -> "TargetScaling":
        fnl = np.asarray(fnl, dtype=np.float64)
        return cls(fnl.mean(), fnl.std())

    def standardise(self, fnl: np.ndarray) -> np.ndarray:
        return (np.asarray(fnl, dtype=np.float64) - self.mean) / self.std

    def to_fnl(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        output = np.asarray(output, dtype=np.float64)
        log_sigma = np.clip(output[:, 1], *LOG_SIGMA_BOUNDS)
        return self.mean + self.std * output[:, 0], self.std * np.exp(log_sigma)

    def state(self) -> dict:
        return {"target_mean": self.mean, "target_std": self.std}


def calibration_factor(true: np.ndarray, mean: np.ndarray, sigma: np.ndarray) -> float:
    """The factor k for predicted errors: sqrt(mean(((true - mean) / sigma)^2)) on the given
    (validation) maps, so that sigma * k gives them a mean squared pull of exactly 1."""
    pull = (np.asarray(true, np.float64) - np.asarray(mean, np.float64)) / np.asarray(sigma, np.float64)
    return float(np.sqrt(np.mean(pull**2)))


def ensemble_estimate(means: np.ndarray, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One estimate per map from S independently trained estimators (seeds): float64
    ``means`` and ``sigmas`` of shape (S, N) (f_NL units, each seed's sigma calibrated)
    to (mean, sigma), each (N,).

    The mean is the seeds' average. For its error, write seed i's estimate of a map as
    mu_i = f + e + d_i: e the part every seed shares (the map's own realisation, what the
    optimal estimator cannot remove either), d_i the seed's own (initialisation,
    validation split, shuffling), independent between seeds with variance v. Each seed's
    calibrated sigma_i^2 estimates var(e) + v; the average's error variance is
    var(e) + v / S; the seeds' sample variance s^2 (ddof 1) estimates v. So

        sigma^2 = mean_i sigma_i^2 - (1 - 1/S) s^2,

    floored at mean_i sigma_i^2 / S (the variance of an average of S independent
    estimates: less shared error than none is not possible). Unlike the mixture variance
    of deep ensembles (mean sigma_i^2 + s^2), this does not widen the interval of an
    average whose seed noise has partly cancelled. S = 1 returns the one seed's estimate.
    """
    means, sigmas = np.asarray(means, np.float64), np.asarray(sigmas, np.float64)
    if means.ndim != 2 or means.shape != sigmas.shape:
        raise ValueError(f"means and sigmas must be (S, N) of one shape, got {means.shape} and {sigmas.shape}")
    n_seeds = means.shape[0]
    if n_seeds == 1:
        return means[0].copy(), sigmas[0].copy()
    mean_variance = np.mean(sigmas ** 2, axis=0)
    seed_variance = np.var(means, axis=0, ddof=1)
    variance = np.maximum(mean_variance - (1.0 - 1.0 / n_seeds) * seed_variance, mean_variance / n_seeds)
    return means.mean(axis=0), np.sqrt(variance)


def odd_channels(kind: str, meta: dict, n_channels: int) -> np.ndarray:
    """bool (n_channels,): the input channels of network ``kind`` that change sign with the
    map (f -> -f). The low-resolution CNN's map, all; the hybrid's, S[empty path] (the
    low-passed map, paths of scales all -1) and every odd channel C[j1, j2] (``odd_pairs``),
    exactly (tests/test_odd_channels.py); the S[p] of longer paths are even."""
    if kind == "baseline":
        return np.ones(n_channels, bool)
    paths = [np.atleast_1d(p) for p in meta["paths"]]
    odd = [bool(np.all(p < 0)) for p in paths] + [True] * len(meta.get("odd_pairs", []))
    if len(odd) != n_channels:
        raise ValueError(f"{len(odd)} channel descriptions for {n_channels} channels")
    return np.asarray(odd)


class SignFlip:
    """The symmetry (x, f_NL) -> (-x, -f_NL) on a network's standardised inputs and targets.

    The map of the field -g at -f is exactly minus the map of g at f
    (``studies/fnl_anchor_bias.py``), so (x, f) and (-x, -f) are equally likely. Used
    two ways (``cmbscat train --sign-flip``): as augmentation, each training example
    negated with probability 1/2 (:meth:`inputs`, :meth:`targets`); and as the estimator,
    odd in the map by construction (:meth:`odd_output`), so that its bias is odd in f_NL and
    zero at f_NL = 0 whatever the network learned.

    Parameters
    ----------
    odd : bool (C,), the channels that change sign with the map (:func:`odd_channels`).
    mean, std : (1, C, 1) input standardisation (x_std = (x - mean) / std).
    target_mean, target_std : the target standardisation (:class:`TargetScaling`).

    In standardised units the raw negation x -> -x is x_std -> -x_std - 2 mean / std on the
    odd channels, and y -> -y - 2 target_mean / target_std on the target.
    """

    def __init__(self, odd: np.ndarray, mean: np.ndarray, std: np.ndarray, target_mean: float,
                 target_std: float):
        odd = np.asarray(odd, bool).reshape(1, -1, 1)
        self.scale = np.where(odd, -1.0, 1.0).astype(np.float32)
        self.shift = np.where(odd, -2.0 * np.asarray(mean, np.float64) / np.asarray(std, np.float64),
                              0.0).astype(np.float32)
        self.target_shift = -2.0 * float(target_mean) / float(target_std)

    def inputs(self, x):
        """The standardised inputs of the negated maps (numpy or torch, (N, C, npix))."""
        if isinstance(x, np.ndarray):
            return x * self.scale + self.shift
        import torch

        return x * torch.as_tensor(self.scale, device=x.device) + torch.as_tensor(self.shift, device=x.device)

    def targets(self, y):
        """The standardised targets of the negated maps."""
        return -y + self.target_shift

    def odd_output(self, out_pos, out_neg):
        """(N, 2) outputs (mean, log sigma; standardised) of the odd estimator from the outputs
        on the maps and on the negated maps: the f_NL estimate [m(x) - m(-x)] / 2, the log
        sigma the mean of the two (numpy or torch)."""
        mean = 0.5 * (out_pos[:, 0] - out_neg[:, 0]) + 0.5 * self.target_shift
        log_sigma = 0.5 * (out_pos[:, 1] + out_neg[:, 1])
        if isinstance(out_pos, np.ndarray):
            return np.stack([mean, log_sigma], axis=1)
        import torch

        return torch.stack([mean, log_sigma], dim=1)


class CubicFisherEstimator:
    """f_NL from the cubic statistic S and its Fisher information F (the anchor).

    Parameters
    ----------
    lmax : band limit at which S was computed (a statistics file's attribute ``lmax``).

    With a = 3 f_NL / T_CMB (1/uK), E_a[S] = a F + O(a^3) and Var(S) = F at a = 0
    (:mod:`cmbscat.stats.cubic`), so f_hat = (T_CMB / 3) S / F is unbiased to that order
    and its standard deviation at f_NL = 0 is (T_CMB / 3) / sqrt(F), the Cramer-Rao
    bound. F is the exact full-sky, noiseless value for the Planck spectrum at ``lmax``
    (:func:`~cmbscat.stats.cubic.fisher_information_legendre`), the variance of S on
    Gaussian simulations up to its quadrature error (< 0.3 % at lmax = 2 nside - 1).
    """

    def __init__(self, lmax: int):
        from cmbscat.sky.spectra import planck2018_cl
        from cmbscat.stats.cubic import fisher_information_legendre

        self.lmax = int(lmax)
        self.fisher = fisher_information_legendre(planck2018_cl(self.lmax))  # uK^2, per unit a
        self.sigma = T_CMB_UK / (3.0 * math.sqrt(self.fisher))              # f_NL units

    def predict(self, cubic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sigma) of f_NL, float64 (N,) each, from S (uK; shape (N,) or (N, 1))."""
        s = np.asarray(cubic, dtype=np.float64).reshape(len(cubic))
        return T_CMB_UK / 3.0 * s / self.fisher, np.full(s.shape, self.sigma)


class FeatureRegressor:
    """A small MLP from a classical statistic's features to (mean, log sigma) of f_NL.

    Features are standardised with the training split's mean and standard deviation,
    the target with :class:`TargetScaling`. Two hidden layers of ``hidden`` units (GELU);
    full-batch Adam on :func:`gaussian_nll`, keeping the weights with the lowest
    validation loss (checked every ``check_every`` steps, stopping after ``patience``
    steps without improvement). Deterministic given ``seed`` on one thread.
    The fitted object holds numpy arrays only (picklable without torch).
    """

    def __init__(self, hidden: int = 32, steps: int = 4000, lr: float = 3e-3,
                 weight_decay: float = 1e-4, check_every: int = 20, patience: int = 600,
                 seed: int = 0):
        self.hidden, self.steps, self.lr, self.weight_decay = hidden, steps, lr, weight_decay
        self.check_every, self.patience, self.seed = check_every, patience, seed
        self.calibration = 1.0

    def _network(self, n_features: int):
        import torch
        from torch import nn

        torch.manual_seed(self.seed)
        return nn.Sequential(nn.Linear(n_features, self.hidden), nn.GELU(),
                             nn.Linear(self.hidden, self.hidden), nn.GELU(),
                             nn.Linear(self.hidden, 2)).double()

    def fit(self, x_train: np.ndarray, fnl_train: np.ndarray, x_val: np.ndarray,
            fnl_val: np.ndarray) -> "FeatureRegressor":
        """Fit on (N, F) features and (N,) f_NL; validation rows choose the weights and
        calibrate sigma (:func:`calibration_factor`). Returns self."""
        import torch

        x_train, x_val = np.asarray(x_train, np.float64), np.asarray(x_val, np.float64)
        self.calibration = 1.0
        self.feature_mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        self.feature_std = np.where(std > 0, std, 1.0)
        self.scaling = TargetScaling.fit(fnl_train)
        xt = torch.from_numpy((x_train - self.feature_mean) / self.feature_std)
        xv = torch.from_numpy((x_val - self.feature_mean) / self.feature_std)
        yt = torch.from_numpy(self.scaling.standardise(fnl_train))
        yv = torch.from_numpy(self.scaling.standardise(fnl_val))
        net = self._network(x_train.shape[1])
        optimiser = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        best, best_state, best_step = float("inf"), None, 0
        for step in range(self.steps):
            optimiser.zero_grad()
            loss = gaussian_nll(net(xt), yt)
            loss.backward()
            optimiser.step()
            if step % self.check_every == 0:
                with torch.no_grad():
                    val = float(gaussian_nll(net(xv), yv))
                if val < best:
                    best, best_step = val, step
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                elif step - best_step >= self.patience:
                    break
        net.load_state_dict(best_state)
        self.state = {k: v.numpy() for k, v in net.state_dict().items()}
        self.n_features, self.best_step, self.val_nll = x_train.shape[1], best_step, best
        mean, sigma = self.predict(x_val)
        self.calibration = calibration_factor(fnl_val, mean, sigma)
        return self

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sigma) of f_NL, float64 (N,) each, for (N, F) features; sigma calibrated."""
        import torch

        net = self._network(self.n_features)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in self.state.items()})
        z = (np.asarray(x, np.float64) - self.feature_mean) / self.feature_std
        with torch.no_grad():
            output = net(torch.from_numpy(z)).numpy()
        mean, sigma = self.scaling.to_fnl(output)
        return mean, sigma * self.calibration

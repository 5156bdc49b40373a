"""The networks on masked skies (issue 13, part 2): the scattering of w d with its pooling
weight, the baseline's masked maps, weighted pooling, training and evaluation with weights,
and the refusal of a test file observed otherwise than the training data."""

import json
import os
import subprocess
import sys

import h5py
import healpy as hp
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cmbscat.cli import main
from cmbscat.errors import CmbscatError
from cmbscat.experiment import datasets
from cmbscat.experiment.evaluate import evaluate, observation_mismatch, predict
from cmbscat.experiment.train import TrainConfig, model_inputs, train
from cmbscat.nn.models import RingAverage, SphericalClassifier, build_model, weighted_mean_std
from cmbscat.scattering.stage import scatter
from cmbscat.scattering.transform import Scattering
from cmbscat.sky.simulate import SimulationConfig, simulate
from cmbscat.sky.source import mask_digest, open_source
from cmbscat.store import Shard, combine_shards

from conftest import assert_one_line_error, run_cli

NSIDE, LMAX, J0 = 32, 63, 3
OBSERVED = dict(store="alm", noise_uk_arcmin=30.0, beam_fwhm_arcmin=60.0)
MASK = dict(mask="galactic:20", apodize_deg=5.0)


def _galactic_latitude(nside: int) -> np.ndarray:
    """|b| in degrees of every RING pixel centre (the maps are in Galactic coordinates)."""
    return np.degrees(np.abs(np.arcsin(hp.pix2vec(nside, np.arange(hp.nside2npix(nside)))[2])))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Masked training and test sims (16 and 8 maps), the test maps unmasked (same beam and
    noise), and their scattering files (J0 3, depth 1: 5 channels at nside_out 4)."""
    root = tmp_path_factory.mktemp("masked")
    out = {}
    for name, n, seed, mask in (("train", 16, 1, MASK), ("test", 8, 2, MASK), ("unmasked", 8, 2, {})):
        out[name] = root / f"{name}.h5"
        simulate(out[name], SimulationConfig(n, NSIDE, LMAX, 2000.0, seed, **OBSERVED, **mask),
                 progress=False)
        out[f"{name}_scat"] = root / f"{name}_scat.h5"
        scatter(out[name], out[f"{name}_scat"], depth=1, J0=J0, progress=False)
    return out


def test_scattering_of_a_masked_file_has_its_weight_and_identity(files):
    with h5py.File(files["test_scat"], "r") as f, h5py.File(files["test"], "r") as s:
        weight, attrs, nside_out = f["weight"][()], dict(f.attrs), int(f.attrs["nside_out"])
        coeffs, alm, mask = f["coeffs"][()], s["alm"][()], s["mask"][()]
        assert f.attrs["per_item_datasets"].tolist() == ["coeffs", "fnl", "labels", "seeds"]
    assert weight.dtype == np.float32 and weight.shape == (hp.nside2npix(nside_out),)
    assert weight.min() >= 0 and weight.max() <= 1
    b = _galactic_latitude(nside_out)
    assert weight[b < 10].max() < 0.05  # deep in the |b| < 20 deg cut
    assert weight[b > 40].min() > 0.9  # far from it
    assert attrs["masked"] and attrs["mask_map2alm_iter"] == 3
    assert attrs["mask"] == "galactic:20.0" and attrs["apodize_deg"] == 5.0
    assert attrs["beam_fwhm_arcmin"] == 60.0 and attrs["noise_uk_arcmin"] == 30.0
    assert attrs["mask_content_sha256"] == mask_digest(mask)
    assert datasets.observation_identity(files["test_scat"]) == datasets.observation_identity(files["test"])
    # the definition: S[p] of w d, w d analysed with three iterations
    sc = Scattering(LMAX, nside=NSIDE, depth=1, J0=J0)
    d = hp.alm2map(alm[0].astype(np.complex128), NSIDE, lmax=LMAX)
    expected = sc(hp.map2alm(mask * d, lmax=LMAX, iter=3, use_weights=False))
    assert np.allclose(coeffs[0], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # a file without a mask has no weight and no mask attributes (its beam and noise are recorded)
    with h5py.File(files["unmasked_scat"], "r") as f:
        assert "weight" not in f and "masked" not in f.attrs and f.attrs["mask"] == ""
    assert datasets.scattering_weight(files["unmasked_scat"]) is None


def test_coefficients_vanish_where_the_weight_does(files, tmp_path):
    """Deep in the cut the coefficients of w d are a small fraction of the full-sky ones; far
    from it they are the full-sky ones. At J0 5 (l < 32): at J0 3 the scaling band (l < 8,
    kernels ~20 deg wide) and the wavelets' spread do not resolve a 40 deg wide cut."""
    out = tmp_path / "scat5.h5"
    scatter(files["test"], out, depth=1, J0=5, progress=False)
    with h5py.File(out, "r") as f, h5py.File(files["test"], "r") as s:
        coeffs, weight, nside_out = f["coeffs"][()], f["weight"][()], int(f.attrs["nside_out"])
        sc = Scattering(LMAX, nside=NSIDE, depth=1, J0=5)
        full = np.stack([sc(row.astype(np.complex128)) for row in s["alm"][:4]])
    coeffs = coeffs[:4]
    b = _galactic_latitude(nside_out)
    deep, far = b < 10, b > 50
    assert weight[deep].max() < 0.05 and weight[far].min() > 0.99
    rms = lambda a, sel: np.sqrt((a[:, :, sel] ** 2).mean(axis=(0, 2)))  # noqa: E731
    assert np.all(rms(coeffs, deep) < 0.2 * rms(full, deep)), rms(coeffs, deep) / rms(full, deep)
    assert np.all(rms(coeffs - full, far) < 0.1 * rms(full, far))


def test_sharded_and_combined_masked_scatter_equals_unsharded(files, tmp_path):
    shards = [tmp_path / f"part{k}.h5" for k in range(2)]
    for k, path in enumerate(shards):
        scatter(files["test"], path, depth=1, J0=J0, shard=Shard(k, 2), progress=False)
    combined = tmp_path / "combined.h5"
    assert combine_shards(combined, shards) == 8
    with h5py.File(combined, "r") as c, h5py.File(files["test_scat"], "r") as u:
        assert np.array_equal(c["coeffs"][()], u["coeffs"][()])
        assert np.array_equal(c["weight"][()], u["weight"][()])
        assert c.attrs["content_sha256"] == u.attrs["content_sha256"]
        assert c.attrs["masked"] and c.attrs["mask_content_sha256"] == u.attrs["mask_content_sha256"]


def test_baseline_reads_the_masked_map_and_the_averaged_mask(files):
    x, _ = model_inputs("baseline", str(files["test"]), {"nside": 8, "lmax": 15}, progress=False)
    weight = datasets.lowres_weight(files["test"], 8)
    source = open_source(files["test"])
    assert weight.dtype == np.float32 and np.allclose(weight, hp.ud_grade(source.mask, 8), atol=1e-7)
    with h5py.File(files["test"], "r") as f:
        d = hp.alm2map(f["alm"][0].astype(np.complex128), NSIDE, lmax=LMAX)
    expected = hp.alm2map(hp.map2alm(source.mask * d, lmax=15, iter=3, use_weights=False), 8, lmax=15)
    assert np.allclose(x[0, 0], expected, atol=1e-4 * np.abs(expected).max())
    assert datasets.lowres_weight(files["unmasked"], 8) is None


def test_ring_average_is_exact():
    avg = RingAverage(16, 4)
    constant = torch.full((3, hp.nside2npix(16)), 0.7, dtype=torch.float64)
    assert torch.allclose(avg(constant), torch.full((3, hp.nside2npix(4)), 0.7, dtype=torch.float64))
    values = torch.rand(2, hp.nside2npix(16), dtype=torch.float64)
    coarse = avg(values)
    assert torch.allclose(coarse.sum(-1) * 16, values.sum(-1))  # the total weight is kept
    assert np.allclose(coarse[0].numpy(), hp.ud_grade(values[0].numpy(), 4))  # healpy's average
    assert torch.equal(RingAverage(8, 8)(values[:, :768]), values[:, :768])
    assert "child_index" not in avg.state_dict()  # geometry, not state: checkpoints unchanged


def test_pooling_without_weight_is_unchanged_and_all_ones_is_the_same():
    torch.manual_seed(0)
    model = build_model("hybrid", 5, 16).eval()
    assert not [k for k in model.state_dict() if "weight_to_final" in k]
    x = torch.randn(4, 5, hp.nside2npix(16))
    with torch.no_grad():
        h = model.features(x)
        before = model.head(torch.cat([h.mean(dim=-1), h.std(dim=-1)], dim=1)).squeeze(-1)
        assert torch.equal(model(x), before)  # the pooling of before weights existed, bitwise
        ones = model(x, torch.ones(hp.nside2npix(16)))
        per_example = model(x, torch.ones(4, hp.nside2npix(16)))
    assert torch.allclose(ones, before, rtol=1e-5, atol=1e-5)
    assert torch.allclose(per_example, before, rtol=1e-5, atol=1e-5)


def test_weighted_pooling_ignores_pixels_of_weight_zero():
    h = torch.randn(2, 3, 192)
    w = (torch.rand(192) > 0.5).float() * torch.rand(192)
    changed = torch.where(w == 0, torch.randn(2, 3, 192) * 100, h)
    assert all(torch.equal(a, b) for a, b in zip(weighted_mean_std(h, w), weighted_mean_std(changed, w)))
    # through the network (eval mode): inputs changed near the south pole, where the weight is 0
    # everywhere within the reach of the three layers' filters, leave the output alone
    torch.manual_seed(0)
    model = SphericalClassifier(2, 16, widths=(4, 4, 4), nside_min=4).eval()
    z = torch.as_tensor(hp.pix2vec(16, np.arange(hp.nside2npix(16)))[2])
    weight = (z > 0.2).float()
    x = torch.randn(3, 2, hp.nside2npix(16))
    y = x.clone()
    y[..., z < -0.9] = 50 * torch.randn_like(y[..., z < -0.9])
    with torch.no_grad():
        assert torch.equal(model(x, weight), model(y, weight))
        assert not torch.equal(model(x), model(y))  # unweighted, the change is seen


class _WeightSpy:
    """Records the shape and mean of every pooling weight the classifiers are called with."""

    def __init__(self):
        self.calls = []
        self.forward = SphericalClassifier.forward

    def __call__(self, model, x, weight=None):
        self.calls.append(None if weight is None else (tuple(weight.shape), float(weight.mean()),
                                                       float(weight.min()), float(weight.max())))
        return self.forward(model, x, weight)


@pytest.fixture(scope="module")
def hybrid_run(files, tmp_path_factory):
    """The hybrid (rotation augmentation on, its default) trained 2 epochs on the masked file;
    every forward call's weight recorded."""
    run_dir = tmp_path_factory.mktemp("runs") / "hybrid"
    spy = _WeightSpy()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SphericalClassifier, "forward", lambda self, x, weight=None: spy(self, x, weight))
        summary = train(run_dir, TrainConfig(data=str(files["train_scat"]), model="hybrid", epochs=2,
                                             batch_size=4), device="cpu", progress=False)
    return run_dir, summary, spy.calls


def test_hybrid_trains_and_evaluates_on_masked_files(files, hybrid_run):
    run_dir, summary, calls = hybrid_run
    assert summary["epochs_run"] == 2
    file_weight = datasets.scattering_weight(files["train_scat"])
    npix = file_weight.size
    # training: each example's weight rotated with its maps (a row per example, the mean kept,
    # in [0, 1]); validation: the file's weight
    rotated = [c for c in calls if c and len(c[0]) == 2]
    assert rotated and all(c[0][1] == npix and 0 <= c[2] and c[3] <= 1 for c in rotated)
    assert all(abs(c[1] - file_weight.mean()) < 0.02 for c in rotated)
    assert any(c and c[0] == (npix,) for c in calls) and None not in calls
    saved = torch.load(run_dir / "model.pt", weights_only=False)
    assert saved["masked"] is True
    assert saved["observation"] == datasets.observation_identity(files["train_scat"])
    metrics = evaluate(run_dir, files["test_scat"], progress=False)
    assert metrics["n"] == 8 and "observation_differs" not in metrics
    # evaluation pools with the test file's weight
    x, _ = model_inputs("hybrid", str(files["test_scat"]), saved["meta"], progress=False)
    model = build_model("hybrid", saved["in_channels"], saved["nside"])
    model.load_state_dict(saved["model"])
    model.eval()
    x = torch.from_numpy((x - saved["mean"]) / saved["std"])
    with torch.no_grad():
        weighted = model(x, torch.from_numpy(datasets.scattering_weight(files["test_scat"]))).double()
    logits = predict(run_dir, files["test_scat"], device="cpu", progress=False)
    assert np.allclose(logits, weighted.numpy(), atol=1e-6)
    assert not np.allclose(logits, model(x).detach().double().numpy(), atol=1e-6)


def test_baseline_trains_and_evaluates_on_masked_files(files, tmp_path):
    config = TrainConfig(data=str(files["train"]), model="baseline", epochs=2, batch_size=4,
                         baseline_nside=8, baseline_lmax=15)
    summary = train(tmp_path / "baseline", config, device="cpu", progress=False)
    assert summary["epochs_run"] == 2
    saved = torch.load(tmp_path / "baseline" / "model.pt", weights_only=False)
    assert saved["masked"] is True and saved["observation"]["mask"] == "galactic:20.0"
    metrics = evaluate(tmp_path / "baseline", files["test"], progress=False)
    assert metrics["n"] == 8 and 0 <= metrics["accuracy"] <= 1


def test_masked_model_on_an_unmasked_file_is_refused_unless_forced(files, hybrid_run, tmp_path):
    run_dir, _, _ = hybrid_run
    assert_one_line_error(run_cli("evaluate", run_dir, files["unmasked_scat"], "--out", tmp_path / "e"),
                          "masked", "mask", "--force")
    assert not (tmp_path / "e" / "metrics.json").exists()
    result = CliRunner().invoke(main, ["evaluate", str(run_dir), str(files["unmasked_scat"]), "--out",
                                       str(tmp_path / "f"), "--force", "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert metrics["n"] == 8 and "mask" in metrics["observation_differs"]


def test_another_mask_is_refused_and_old_checkpoints_are_not_checked(files):
    identity = datasets.observation_identity(files["test_scat"])
    other = {**identity, "mask": "galactic:30.0", "mask_content_sha256": "0" * 64}
    with pytest.raises(CmbscatError, match="--force"):
        observation_mismatch("run", {"masked": True, "observation": other}, files["test_scat"])
    assert "mask" in observation_mismatch("run", {"observation": other}, files["test_scat"], force=True)
    assert observation_mismatch("run", {"observation": identity}, files["test_scat"]) == ""
    assert observation_mismatch("run", {}, files["unmasked_scat"]) == ""  # saved before the record


@pytest.mark.slow
def test_two_ranks_train_the_masked_hybrid_as_one_process(files, tmp_path):
    """torchrun, gloo: with augmentation each rank rotates the weight rows of its maps."""
    pytest.importorskip("torch.distributed")
    args = [files["train_scat"], None, "--model", "hybrid", "--epochs", "2", "--batch-size", "8",
            "--device", "cpu", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli("train", *[one if a is None else a for a in args], check=True)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", "-m", "cmbscat", "train",
                           *map(str, [two if a is None else a for a in args])],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    h1, h2 = _history(one), _history(two)
    assert len(h1) == len(h2) == 2
    for a, b in zip(h1, h2):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5), (a, b)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5), (a, b)


def _history(run_dir):
    import csv

    with open(run_dir / "history.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]

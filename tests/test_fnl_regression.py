"""f_NL regression end to end on tiny maps: train --target fnl, evaluate, the pipeline's table."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cmbscat.cli import main
from cmbscat.experiment.evaluate import evaluate, predict, predict_fnl
from cmbscat.experiment.fnl_estimators import CubicFisherEstimator
from cmbscat.experiment.train import TrainConfig, train
from cmbscat.errors import CmbscatError
from cmbscat.scattering.stage import scatter
from cmbscat.sky.simulate import SimulationConfig, simulate
from cmbscat.stats.stage import compute_stats

NSIDE, LMAX = 32, 63


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Training maps with f_NL uniform in [-1500, 1500], test maps on a grid; their
    statistics and scattering files."""
    root = tmp_path_factory.mktemp("fnl")
    out = {}
    for split, n, seed, dist in (("train", 48, 5, "uniform:-1500,1500"), ("test", 24, 6, "grid:-1000,0,1000")):
        sims = root / f"sims_{split}.h5"
        simulate(sims, SimulationConfig(n_maps=n, nside=NSIDE, lmax=LMAX, fnl=0.0, seed=seed, store="alm",
                                        fnl_dist=dist), progress=False)
        compute_stats(sims, root / f"stats_{split}.h5", progress=False)
        scatter(sims, root / f"scat_{split}.h5", J0=3, depth=2, odd=True, progress=False)
        out[split] = {"sims": sims, "stats": root / f"stats_{split}.h5", "scat": root / f"scat_{split}.h5"}
    out["root"] = root
    return out


def test_cubic_fisher_anchor(files, tmp_path):
    run = tmp_path / "anchor"
    summary = train(run, TrainConfig(data=str(files["train"]["stats"]), model="cubic_fisher", target="fnl"))
    assert summary["sigma_fnl"] == pytest.approx(CubicFisherEstimator(LMAX).sigma)
    m = evaluate(run, files["test"]["stats"], progress=False)
    assert m["target"] == "fnl" and m["n"] == 24
    assert [b["fnl_mean"] for b in m["bins"]] == [-1000.0, 0.0, 1000.0]
    assert all(b["n"] == 8 for b in m["bins"])
    pred = np.load(run / "predictions.npy")
    assert pred.shape == (24, 2) and np.all(pred[:, 1] == pytest.approx(CubicFisherEstimator(LMAX).sigma))
    assert (run / "fnl.png").stat().st_size > 0
    # the anchor tracks the truth: at f_NL +-1000 (10 sigma) the estimates have the right sign
    true = np.tile([-1000.0, 0.0, 1000.0], 8)
    assert np.all(np.sign(pred[true != 0, 0]) == np.sign(true[true != 0]))


@pytest.mark.parametrize("model, data", [("onepoint", "stats"), ("cubic", "stats"), ("hybrid", "scat"),
                                         ("baseline", "sims")])
def test_estimators_train_and_evaluate(files, tmp_path, model, data):
    run = tmp_path / model
    config = TrainConfig(data=str(files["train"][data]), model=model, target="fnl", epochs=2,
                         batch_size=8, baseline_nside=8, baseline_lmax=15)
    summary = train(run, config, device="cpu", progress=False)
    assert summary["target"] == "fnl" and np.isfinite(summary["val_rmse"])
    mean, sigma = predict_fnl(run, files["test"][data], device="cpu", progress=False)
    assert mean.shape == sigma.shape == (24,) and np.all(sigma > 0) and np.all(np.isfinite(mean))
    m = evaluate(run, files["test"][data], device="cpu", progress=False)
    assert 0 <= m["coverage68"] <= m["coverage95"] <= 1
    assert np.allclose(np.load(run / "predictions.npy"), np.stack([mean, sigma], 1))
    with pytest.raises(CmbscatError, match="estimates f_NL"):
        predict(run, files["test"][data], device="cpu", progress=False)


def test_network_regression_resumes_where_it_stopped(files, tmp_path, monkeypatch):
    """Interrupted after epoch 1 of 2 and run again: the weights of an uninterrupted run."""
    import torch

    import cmbscat.experiment.train as train_module

    config = TrainConfig(data=str(files["train"]["scat"]), model="hybrid", target="fnl", epochs=2, batch_size=8)
    train(tmp_path / "whole", config, device="cpu", progress=False)
    original = train_module._write_history

    def write_then_interrupt(run_dir, history):
        original(run_dir, history)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_write_history", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed", config, device="cpu", progress=False)
    monkeypatch.setattr(train_module, "_write_history", original)
    train(tmp_path / "resumed", config, device="cpu", progress=False)
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed" / "model.pt", weights_only=False)
    assert whole["calibration"] == pytest.approx(resumed["calibration"], rel=1e-5)
    assert all(torch.allclose(whole["model"][k].float(), resumed["model"][k].float(), atol=1e-6)
               for k in whole["model"])


def test_cli_refusals(files, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["train", str(files["train"]["stats"]), str(tmp_path / "x"),
                             "--model", "cubic_fisher", "--no-progress"])
    assert r.exit_code != 0 and "--target fnl" in r.output and "Traceback" not in r.output
    # a file made before per-map f_NL (no /fnl): refused in one line, no run folder left
    import h5py
    import shutil

    old = tmp_path / "old_stats.h5"
    shutil.copy(files["train"]["stats"], old)
    with h5py.File(old, "a") as f:
        del f["fnl"]
    r = runner.invoke(main, ["train", str(old), str(tmp_path / "y"), "--model", "onepoint", "--target", "fnl",
                             "--no-progress"])
    assert r.exit_code != 0 and "/fnl" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "y").exists()


def test_cli_train_and_evaluate_print_one_line(files, tmp_path):
    runner = CliRunner()
    run = tmp_path / "cli"
    r = runner.invoke(main, ["train", str(files["train"]["stats"]), str(run), "--model", "cubic_fisher",
                             "--target", "fnl", "--no-progress"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["evaluate", str(run), str(files["test"]["stats"]), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "sigma at f_NL = 0" in r.output and "coverage" in r.output


def test_pipeline_fnl_table(tmp_path, monkeypatch):
    """The regression pipeline at tiny size: every model, one table read against the anchor."""
    from cmbscat.experiment.pipeline import run_pipeline

    monkeypatch.chdir(tmp_path)
    cfg = {"title": "tiny f_NL regression", "out": "out", "workers": 1, "target": "fnl",
           "simulate": {"nside": NSIDE, "lmax": LMAX, "store": "alm", "n_train": 32, "n_test": 18,
                        "seed_train": 1, "seed_test": 2, "fnl_dist_train": "uniform:-1500,1500",
                        "fnl_dist_test": "grid:-1000,0,0,1000"},
           "scatter": {"depth": 2, "J0": 3},
           "models": {"cubic_fisher": {}, "onepoint": {}, "hybrid": {"epochs": 1, "batch_size": 8}}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    table = run_pipeline(tmp_path / "c.json", device="cpu", progress=False)
    text = table.read_text()
    assert "ratio to the optimal sigma" in text
    assert "Fisher prediction" in text
    row = next(line for line in text.splitlines() if line.startswith("| cubic statistic S / F"))
    assert "| 1.00 |" in row  # the anchor against itself
    assert "Bias against the anchor on the same maps" in text
    assert table.with_suffix(".png").stat().st_size > 0
    # a second run finds everything current and writes the same table
    assert run_pipeline(tmp_path / "c.json", device="cpu", progress=False).read_text().split("Stage wall")[0] \
        == text.split("Stage wall")[0]


def test_paired_bias_cancels_the_maps_own_fluctuation():
    """A method = the anchor's estimate + a known bias + a little noise of its own: the paired
    bias finds the bias with the small noise's error, where the unpaired one sees sigma."""
    from cmbscat.experiment.fnl_report import FnlResult, paired_bias

    rng = np.random.default_rng(3)
    true = np.repeat([-40.0, 0.0, 40.0], 400)
    anchor = true + 3.0 * rng.standard_normal(true.size)          # unbiased, sigma 3
    bias = 0.05 * true                                              # -2, 0, +2
    method = anchor + bias + 1.0 * rng.standard_normal(true.size)  # correlated with the anchor

    def result(model, mean):
        return FnlResult(model, [0], [{}], np.stack([mean, np.ones_like(mean)], axis=1)[None], true)

    rows = paired_bias(result("hybrid", method), result("cubic_fisher", anchor))
    assert [r["fnl"] for r in rows] == [-40.0, 0.0, 40.0] and all(r["n"] == 400 for r in rows)
    for r, expected in zip(rows, (-2.0, 0.0, 2.0)):
        assert abs(r["bias_error"] - 1.0 / 20) < 0.01          # the method's own noise / sqrt(n)
        assert abs(r["bias"] - expected) < 4 * r["bias_error"]
        assert abs(r["sigma_fnl"] - np.sqrt(10.0)) < 0.3


def test_pooled_paired_bias_is_the_odd_part():
    """Pooling +f and -f reads (b(f) - b(-f)) / 2: an odd bias is found whole with an error
    sqrt(2) smaller than one bin's, an even one cancels; f_NL = 0 and unpaired values are left out."""
    from cmbscat.experiment.fnl_report import FnlResult, paired_bias, pooled_paired_bias

    rng = np.random.default_rng(4)
    true = np.repeat([-40.0, -20.0, 0.0, 20.0, 40.0, 60.0], 400)
    anchor = true + 3.0 * rng.standard_normal(true.size)

    def result(model, mean):
        return FnlResult(model, [0], [{}], np.stack([mean, np.ones_like(mean)], axis=1)[None], true)

    noise = 1.0 * rng.standard_normal(true.size)
    odd = pooled_paired_bias(result("hybrid", anchor + 0.05 * true + noise), result("cubic_fisher", anchor))
    assert [r["fnl"] for r in odd] == [20.0, 40.0] and all(r["n"] == 800 for r in odd)
    for r, expected in zip(odd, (1.0, 2.0)):
        assert abs(r["bias_error"] - 1.0 / np.sqrt(800)) < 0.006
        assert abs(r["bias"] - expected) < 4 * r["bias_error"]
        assert abs(r["sigma_fnl"] - np.sqrt(10.0)) < 0.3
    even = pooled_paired_bias(result("hybrid", anchor + 1.5 + noise), result("cubic_fisher", anchor))
    assert all(abs(r["bias"]) < 4 * r["bias_error"] for r in even)
    assert all(abs(r["bias"] - 1.5) < 0.1 for r in paired_bias(result("hybrid", anchor + 1.5 + noise),
                                                                 result("cubic_fisher", anchor)))


def test_ensembles_join_the_table_after_their_method():
    """A method with several seeds gets an ensemble row (one estimate per map, its own
    metrics), named as such, right after it; a one-seed method gets none."""
    from cmbscat.experiment.fnl_report import FnlResult, fnl_table, with_ensembles
    from cmbscat.experiment.fnl_metrics import regression_metrics

    rng = np.random.default_rng(6)
    true = np.repeat([-40.0, 0.0, 40.0], 200)
    anchor = true + 3.0 * rng.standard_normal(true.size)
    seeds = anchor + 2.0 * rng.standard_normal((3, true.size))
    sigma = np.full(true.size, np.sqrt(13.0))

    def result(model, means):
        return FnlResult(model, list(range(len(means))), [regression_metrics(true, m, sigma) for m in means],
                         np.stack([np.stack([m, sigma], axis=1) for m in means]), true)

    by_model = with_ensembles({"cubic_fisher": result("cubic_fisher", [anchor]), "hybrid": result("hybrid", seeds)})
    assert list(by_model) == ["cubic_fisher", "hybrid", "hybrid ensemble"]
    ensemble = by_model["hybrid ensemble"]
    assert ensemble.ensemble_of == 3 and ensemble.predictions.shape == (1, true.size, 2)
    np.testing.assert_allclose(ensemble.predictions[0, :, 0], seeds.mean(axis=0))
    cfg = {"simulate": {"lmax": 63, "nside": 32, "n_train": 10, "n_test": true.size,
                        "fnl_dist_train": "uniform:-80,80", "fnl_dist_test": "grid:-40,0,40"}}
    text = fnl_table(cfg, by_model, {"train hybrid seed 0": 10.0, "train hybrid seed 1": 12.0})
    row = next(line for line in text.splitlines() if "(hybrid), ensemble of 3 seeds |" in line)
    assert row.rstrip().endswith("| 22 s |")  # the seeds' wall times
    # main, per-bin, paired, pooled +-f
    assert sum("ensemble of 3 seeds" in line for line in text.splitlines()) == 4


def test_sign_flip_algebra():
    """SignFlip's input and target maps are involutions, and its odd output is odd."""
    from cmbscat.experiment.fnl_estimators import SignFlip

    rng = np.random.default_rng(0)
    odd = np.array([True, False, True])
    mean, std = rng.normal(size=(1, 3, 1)).astype(np.float32), rng.uniform(1, 2, (1, 3, 1)).astype(np.float32)
    flip = SignFlip(odd, mean, std, target_mean=3.0, target_std=20.0)
    raw = rng.normal(size=(4, 3, 5)).astype(np.float32)
    x = (raw - mean) / std
    negated = np.where(odd[None, :, None], -raw, raw)
    assert np.allclose(flip.inputs(x), (negated - mean) / std, atol=1e-6)
    assert np.allclose(flip.inputs(flip.inputs(x)), x, atol=1e-6)
    y = (np.array([10.0, -40.0]) - 3.0) / 20.0
    assert np.allclose(flip.targets(y), (np.array([-10.0, 40.0]) - 3.0) / 20.0)
    out_pos, out_neg = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    combined, swapped = flip.odd_output(out_pos, out_neg), flip.odd_output(out_neg, out_pos)
    to_fnl = lambda out: 3.0 + 20.0 * out[:, 0]  # noqa: E731
    assert np.allclose(to_fnl(swapped), -to_fnl(combined)) and np.allclose(swapped[:, 1], combined[:, 1])


@pytest.mark.parametrize("model, data", [("hybrid", "scat"), ("baseline", "sims")])
def test_sign_flip_estimator_is_odd_in_the_map(files, tmp_path, model, data):
    """Trained with --sign-flip, the estimate of the negated maps is minus the estimate."""
    import shutil

    import h5py

    from cmbscat.experiment.fnl_estimators import odd_channels

    run = tmp_path / model
    summary = train(run, TrainConfig(data=str(files["train"][data]), model=model, target="fnl", epochs=2,
                                     batch_size=8, baseline_nside=8, baseline_lmax=15, sign_flip=True),
                    device="cpu", progress=False)
    assert np.isfinite(summary["val_rmse"])
    negated = tmp_path / "negated.h5"
    shutil.copy(files["test"][data], negated)
    with h5py.File(negated, "r+") as f:
        if model == "hybrid":
            odd = odd_channels("hybrid", {"paths": f["paths"][()].tolist(),
                                          "odd_pairs": f["odd_pairs"][()].tolist()}, f["coeffs"].shape[1])
            assert odd.sum() == 1 + len(f["odd_pairs"])
            coeffs = f["coeffs"][()]
            coeffs[:, odd] *= -1
            f["coeffs"][...] = coeffs
        else:
            f["alm"][...] = -f["alm"][()]
    mean, sigma = predict_fnl(run, files["test"][data], device="cpu", progress=False)
    mean_neg, sigma_neg = predict_fnl(run, negated, device="cpu", progress=False)
    assert np.allclose(mean_neg, -mean, rtol=0, atol=1e-4 * np.abs(mean).max())
    assert np.allclose(sigma_neg, sigma, rtol=1e-4)
    m = evaluate(run, files["test"][data], progress=False)
    assert m["target"] == "fnl" and 0 <= m["coverage68"] <= 1


def test_sign_flip_is_refused_where_it_does_not_apply(files):
    for model, target in (("hybrid", "label"), ("onepoint", "fnl")):
        with pytest.raises(CmbscatError, match="--sign-flip applies to the networks' f_NL estimators"):
            TrainConfig(data="x.h5", model=model, target=target, sign_flip=True).validate()


def test_cli_evaluates_and_scores_with_an_ensemble_of_runs(files, tmp_path):
    """Several f_NL runs given to ``cmbscat evaluate``: their ensemble (the report's
    combination of the same seeds), on labelled test maps and on a user's unlabelled maps."""
    import shutil

    import h5py

    from cmbscat.experiment.fnl_estimators import ensemble_estimate
    from cmbscat.experiment.fnl_metrics import regression_metrics

    runner = CliRunner()
    test = str(files["test"]["scat"])
    runs = []
    for seed in (0, 1):
        runs.append(str(tmp_path / f"seed{seed}"))
        train(runs[-1], TrainConfig(data=str(files["train"]["scat"]), model="hybrid", target="fnl", epochs=1,
                                    batch_size=8, seed=seed), device="cpu", progress=False)
    each = [predict_fnl(run, test, device="cpu", progress=False) for run in runs]
    mean, sigma = ensemble_estimate(np.stack([m for m, _ in each]), np.stack([s for _, s in each]))
    assert not np.allclose(each[0][0], each[1][0])  # two different estimators

    r = runner.invoke(main, ["evaluate", *runs, test, "--out", str(tmp_path / "ens"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "ensemble of 2 runs" in r.output and "coverage" in r.output
    assert np.allclose(np.load(tmp_path / "ens" / "predictions.npy"), np.stack([mean, sigma], 1))
    m = json.loads((tmp_path / "ens" / "metrics.json").read_text())
    true = np.tile([-1000.0, 0.0, 1000.0], 8)
    assert m["coverage68"] == pytest.approx(regression_metrics(true, mean, sigma)["coverage68"])
    assert [e["run"] for e in m["ensemble_of"]] == runs and m["seed"] == [0, 1] and m["model"] == "hybrid"

    # a user's maps (labels -1): f_NL +/- sigma of the ensemble per map, on stdout and in scores.json
    user = tmp_path / "user_scat.h5"
    shutil.copy(test, user)
    with h5py.File(user, "a") as f:
        f["labels"][...] = -1
    r = runner.invoke(main, ["evaluate", *runs, str(user), "--out", str(tmp_path / "user"), "--no-progress"])
    assert r.exit_code == 0, r.output
    scores = json.loads((tmp_path / "user" / "scores.json").read_text())
    assert [row["fnl"] for row in scores["maps"]] == pytest.approx(mean)
    assert [row["sigma_fnl"] for row in scores["maps"]] == pytest.approx(sigma)
    assert f"map 0: f_NL = {mean[0]:.4g} +/- {sigma[0]:.3g}" in r.output

    # refusals, one line each and no traceback
    classifier = tmp_path / "classifier"
    # (trained on the test grid, which has Gaussian maps: a classifier needs both classes)
    train(classifier, TrainConfig(data=str(files["test"]["stats"]), model="cubic"), progress=False)
    anchor = tmp_path / "anchor"
    train(anchor, TrainConfig(data=str(files["train"]["stats"]), model="cubic_fisher", target="fnl"))
    for args, message in (([*runs, test], "needs --out"),
                          ([runs[0], runs[0], test, "--out", str(tmp_path / "x")], "named twice"),
                          ([runs[0], str(anchor), test, "--out", str(tmp_path / "x")], "one method"),
                          ([str(classifier), str(classifier) + "/", test, "--out", str(tmp_path / "x")],
                           "named twice"),
                          ([*runs, test, "--out", str(tmp_path / "x"), "--reference", test], "--reference")):
        r = runner.invoke(main, ["evaluate", *args, "--no-progress"])
        assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output, (args, r.output)
    shutil.copytree(classifier, tmp_path / "classifier2")
    r = runner.invoke(main, ["evaluate", str(classifier), str(tmp_path / "classifier2"), str(files["test"]["stats"]),
                             "--out", str(tmp_path / "x"), "--no-progress"])
    assert r.exit_code != 0 and "classifier" in r.output and "Traceback" not in r.output

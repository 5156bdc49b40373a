"""Response calibration of f_NL estimators (cmbscat.experiment.fnl_calibration) and
``cmbscat evaluate --calibrate`` on tiny maps."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cmbscat.cli import main
from cmbscat.experiment.fnl_calibration import ResponseCalibration


def _response(f):
    """A response like the hybrid's: over-responding by ~2 at |f| = 40, less at 60."""
    x = f / 60.0
    return f + 0.2 + 2.3 * x + 1.1 * x ** 3 - 2.3 * x ** 5


def test_fit_recovers_a_known_response_and_inverts_it():
    rng = np.random.default_rng(0)
    true = rng.uniform(-60, 60, 200000)
    mean = _response(true) + rng.normal(0, 3.0, true.size)
    calibration = ResponseCalibration.fit(true, mean, scale=60.0, domain=(-90.0, 90.0))
    assert calibration.degree == 5 and calibration.n_maps == true.size
    assert np.allclose(calibration.coefficients, [0.2, 2.3, 1.1, -2.3], atol=4 * np.array(calibration.errors))
    grid = np.linspace(-60, 60, 121)
    assert np.max(np.abs(calibration.response(grid) - _response(grid))) < 0.15
    # the inverse, to rounding, and sigma through the slope
    fnl, sigma = calibration.apply(calibration.response(grid), np.full(grid.size, 4.0))
    assert np.max(np.abs(fnl - grid)) < 1e-9
    step = 1e-4
    slope = (calibration.response(grid + step) - calibration.response(grid - step)) / (2 * step)
    assert np.allclose(calibration.slope(grid), slope, rtol=1e-7)
    assert np.allclose(sigma, 4.0 / slope)
    # corrected estimates are unbiased where the raw ones were not
    test = np.repeat([-40.0, 40.0], 20000)
    raw = _response(test) + rng.normal(0, 3.0, test.size)
    corrected, _ = calibration.apply(raw, np.ones_like(raw))
    assert abs(raw[test > 0].mean() - 40) > 1.5
    assert abs(corrected[test > 0].mean() - 40) < 0.15 and abs(corrected[test < 0].mean() + 40) < 0.15


def test_paired_fit_cancels_the_scatter_both_estimators_share():
    """Against an unbiased reference that shares the maps' realisation noise, the fit finds
    the same response with errors smaller by that noise's share (here 3 of sqrt(10))."""
    rng = np.random.default_rng(1)
    true = rng.uniform(-60, 60, 4000)
    shared = rng.normal(0, 3.0, true.size)          # each map's own realisation: in both estimators
    reference = true + shared
    mean = _response(true) + shared + rng.normal(0, 1.0, true.size)
    by_truth = ResponseCalibration.fit(true, mean, scale=60.0)
    paired = ResponseCalibration.fit(true, mean, scale=60.0, reference=reference)
    assert (by_truth.against, paired.against) == ("truth", "reference")
    ratio = np.array(paired.errors) / np.array(by_truth.errors)
    assert np.allclose(ratio, 1 / np.sqrt(10), rtol=0.1)
    assert np.allclose(paired.coefficients, [0.2, 2.3, 1.1, -2.3], atol=4 * np.array(paired.errors))
    assert ResponseCalibration.from_dict(json.loads(json.dumps(paired.to_dict()))) == paired
    old_record = {k: v for k, v in by_truth.to_dict().items() if k != "against"}
    assert ResponseCalibration.from_dict(old_record) == by_truth
    with pytest.raises(ValueError, match="reference"):
        ResponseCalibration.fit(true, mean, reference=reference[:-1])


def test_outside_the_domain_the_response_continues_by_its_tangent():
    calibration = ResponseCalibration((0.0, 6.0, 0.0, 0.0), (0.0,) * 4, 60.0, (-90.0, 90.0), 100)
    fnl, sigma = calibration.apply(np.array([0.0, 1.1 * 200.0, -1.1 * 200.0]), np.ones(3))
    assert np.allclose(fnl, [0.0, 200.0, -200.0]) and np.allclose(sigma, 1 / 1.1)
    again = ResponseCalibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert again == calibration


def test_a_response_without_an_inverse_is_refused():
    true = np.linspace(-60, 60, 200)
    with pytest.raises(ValueError, match="does not increase"):
        ResponseCalibration.fit(true, -true)
    with pytest.raises(ValueError, match="odd"):
        ResponseCalibration.fit(true, true, degree=4)
    with pytest.raises(ValueError, match="calibration maps"):
        ResponseCalibration.fit(true[:4], true[:4])


def test_cli_evaluate_calibrate(tmp_path):
    """A run and an ensemble, on labelled and unlabelled maps: the estimates equal the raw
    ones read through the response fitted on the calibration file's raw estimates. (The
    cubic statistic's estimators: tiny networks respond too weakly for an invertible fit.)"""
    import shutil

    import h5py

    from cmbscat.experiment.evaluate import predict_fnl
    from cmbscat.experiment.fnl_estimators import ensemble_estimate
    from cmbscat.experiment.train import TrainConfig, train
    from cmbscat.sky.simulate import SimulationConfig, simulate
    from cmbscat.stats.stage import compute_stats

    files = {}
    for split, n, seed, dist in (("train", 48, 5, "uniform:-1500,1500"), ("calib", 48, 7, "uniform:-1000,1000"),
                                 ("test", 12, 6, "grid:-1000,0,1000")):
        sims = tmp_path / f"sims_{split}.h5"
        simulate(sims, SimulationConfig(n_maps=n, nside=32, lmax=63, fnl=0.0, seed=seed, store="alm",
                                        fnl_dist=dist), progress=False)
        files[split] = tmp_path / f"stats_{split}.h5"
        compute_stats(sims, files[split], progress=False)
    anchor = str(tmp_path / "anchor")
    train(anchor, TrainConfig(data=str(files["train"]), model="cubic_fisher", target="fnl"))
    runs = []
    for seed in (0, 1):
        runs.append(str(tmp_path / f"seed{seed}"))
        train(runs[-1], TrainConfig(data=str(files["train"]), model="cubic", target="fnl", seed=seed),
              progress=False)
    true_calib = np.asarray(h5py.File(files["calib"], "r")["fnl"][:], dtype=np.float64)

    def expected(run_dirs, data, reference=None):
        each = [[predict_fnl(r, path, progress=False) for r in run_dirs]
                for path in (files["calib"], data)]
        if len(run_dirs) == 1:
            (calib_mean, _), (mean, sigma) = each[0][0], each[1][0]
        else:
            calib_mean, _ = ensemble_estimate(*(np.stack(v) for v in zip(*each[0])))
            mean, sigma = ensemble_estimate(*(np.stack(v) for v in zip(*each[1])))
        return ResponseCalibration.fit(true_calib, calib_mean, reference=reference).apply(mean, sigma)

    runner = CliRunner()
    user = tmp_path / "user_scat.h5"
    shutil.copy(files["test"], user)
    with h5py.File(user, "a") as f:
        f["labels"][...] = -1
    for name, run_dirs in (("one", [anchor]), ("ensemble", runs)):
        out = tmp_path / name
        r = runner.invoke(main, ["evaluate", *run_dirs, str(files["test"]), "--out", str(out),
                                 "--calibrate", str(files["calib"]), "--no-progress"])
        assert r.exit_code == 0, r.output
        mean, sigma = expected(run_dirs, files["test"])
        assert np.allclose(np.load(out / "predictions.npy"), np.stack([mean, sigma], 1))
        record = json.loads((out / "metrics.json").read_text())["response_calibration"]
        assert record["n_maps"] == 48 and record["file"] == str(files["calib"])
        r = runner.invoke(main, ["evaluate", *run_dirs, str(user), "--out", str(tmp_path / f"{name}_user"),
                                 "--calibrate", str(files["calib"]), "--no-progress"])
        assert r.exit_code == 0, r.output
        scores = json.loads((tmp_path / f"{name}_user" / "scores.json").read_text())
        assert [m["fnl"] for m in scores["maps"]] == pytest.approx(mean)
        assert "response_calibration" in scores

    # the paired fit: against the anchor's estimates of the same maps (here its statistics
    # are the calibration file itself)
    out = tmp_path / "paired"
    r = runner.invoke(main, ["evaluate", *runs, str(files["test"]), "--out", str(out), "--calibrate",
                             str(files["calib"]), "--calibrate-against", anchor, str(files["calib"]),
                             "--no-progress"])
    assert r.exit_code == 0, r.output
    anchor_calib, _ = predict_fnl(anchor, files["calib"], progress=False)
    mean, sigma = expected(runs, files["test"], reference=anchor_calib)
    assert np.allclose(np.load(out / "predictions.npy"), np.stack([mean, sigma], 1))
    assert not np.allclose(mean, expected(runs, files["test"])[0])  # not the fit against the truth
    record = json.loads((out / "metrics.json").read_text())["response_calibration"]
    assert record["against"] == "reference" and record["reference"]["run"] == anchor

    # refusals, one line each and no traceback
    for args, message in (([runs[0], str(files["test"]), "--calibrate", str(files["calib"]),
                            "--calibrate-against", anchor, str(files["test"])], "does not hold the maps"),
                          ([runs[0], str(files["test"]), "--calibrate-against", anchor, str(files["calib"])],
                           "needs --calibrate"),([runs[0], str(files["test"]), "--calibrate", str(files["test"])], "own noise"),
                          ([runs[0], str(files["calib"]), "--out", str(tmp_path / "x"), "--calibrate",
                            str(files["test"])], "at least 10"),
                          ([runs[0], str(files["test"]), "--calibrate", str(tmp_path / "none.h5")],
                           "no such file")):
        r = runner.invoke(main, ["evaluate", *args, "--no-progress"])
        assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output, (args, r.output)


def test_pipeline_calibrates_the_configured_models(tmp_path, monkeypatch):
    """``"calibrate"`` with a calibration split: the table gains the calibrated ensemble,
    equal to the response fitted on the seeds' evaluations on the calibration maps."""
    from cmbscat.errors import CmbscatError
    from cmbscat.experiment.fnl_report import ensemble_result, load_fnl_result
    from cmbscat.experiment.pipeline import run_pipeline

    monkeypatch.chdir(tmp_path)
    cfg = {"title": "tiny calibrated f_NL regression", "out": "out", "workers": 1, "target": "fnl",
           "simulate": {"nside": 32, "lmax": 63, "store": "alm", "n_train": 48, "n_test": 12, "n_calib": 48,
                        "seed_train": 1, "seed_test": 2, "seed_calib": 3,
                        "fnl_dist_train": "uniform:-1500,1500", "fnl_dist_test": "grid:-1000,0,1000",
                        "fnl_dist_calib": "uniform:-1000,1000"},
           "scatter": {"depth": 2, "J0": 3},
           "models": {"cubic_fisher": {}, "cubic": {"seeds": [0, 1]}},
           "calibrate": ["cubic"]}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    text = run_pipeline(tmp_path / "c.json", device="cpu", progress=False).read_text()
    names = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| cubic statistic S, MLP")]
    assert names[:3] == ["| cubic statistic S, MLP regression",
                         "| cubic statistic S, MLP regression, ensemble of 2 seeds",
                         "| cubic statistic S, MLP regression, ensemble of 2 seeds, response calibrated on 48 maps"]
    runs = [tmp_path / "out/runs/cubic" / f"seed{s}" for s in (0, 1)]
    test = ensemble_result(load_fnl_result("cubic", [0, 1], runs, tmp_path / "out/stats_test.h5"))
    calib = ensemble_result(load_fnl_result("cubic", [0, 1], [r / "calib" for r in runs],
                                            tmp_path / "out/stats_calib.h5"))
    response = ResponseCalibration.fit(calib.true, calib.predictions[0][:, 0])
    mean, _ = response.apply(test.predictions[0][:, 0], test.predictions[0][:, 1])
    row = next(line for line in text.splitlines() if "response calibrated" in line)
    zero = test.true == 0
    assert f"| {mean[zero].std(ddof=1):.2f} |" in row  # sigma at f_NL = 0 of the corrected estimates

    # the paired fit: against the anchor's estimates of the calibration maps (its chain gains them)
    (tmp_path / "c.json").write_text(json.dumps({**cfg, "calibrate_against": "cubic_fisher"}))
    text = run_pipeline(tmp_path / "c.json", device="cpu", progress=False).read_text()
    anchor = load_fnl_result("cubic_fisher", [0], [tmp_path / "out/runs/cubic_fisher/seed0/calib"],
                             tmp_path / "out/stats_calib.h5")
    paired = ResponseCalibration.fit(calib.true, calib.predictions[0][:, 0],
                                     reference=anchor.predictions[0][:, 0])
    mean, _ = paired.apply(test.predictions[0][:, 0], test.predictions[0][:, 1])
    row = next(line for line in text.splitlines() if "response calibrated" in line)
    assert "response calibrated on 48 maps against the cubic S / F estimates" in row
    assert f"| {mean[zero].std(ddof=1):.2f} |" in row
    assert not any(line.startswith("| cubic statistic S / F") and "calibrated" in line
                   for line in text.splitlines())  # the anchor itself is not calibrated

    # a config that cannot calibrate: one line
    for change, message in (({"calibrate": ["hybrid"]}, "not among the config's models"),
                            ({"calibrate_against": "onepoint"}, "calibrate_against: onepoint not among"),
                            ({"calibrate_against": "cubic"}, "must have one seed"),
                            ({"calibrate": [], "calibrate_against": "cubic_fisher"}, "needs \"calibrate\""),
                            ({"simulate": {**cfg["simulate"], "n_calib": None}}, None)):
        bad = {**cfg, **change}
        if message is None:
            del bad["simulate"]["n_calib"]
            message = "simulate.n_calib"
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(CmbscatError, match=message):
            run_pipeline(tmp_path / "bad.json", device="cpu", progress=False)

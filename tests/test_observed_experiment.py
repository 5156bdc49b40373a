"""The observed-skies experiment at tiny size: one folder per setting, the same skies, the
first setting's models applied to the others' maps, one table."""

import json

import h5py
import numpy as np

from cmbscat.experiment.observed_experiment import run_observed, setting_folder, transfer_summary

from conftest import assert_one_line_error, run_cli


def tiny_config(tmp_path):
    return {"title": "tiny observed", "out": str(tmp_path / "out"), "workers": 1,
            "simulate": {"nside": 32, "lmax": 63, "fnl": 2000, "store": "alm", "n_train": 32, "n_test": 16,
                         "seed_train": 1, "seed_test": 2},
            "observations": {"full sky, noiseless": {},
                             "beam + noise + mask": {"beam_fwhm_arcmin": 60.0, "noise_uk_arcmin": 300.0,
                                                     "mask": "galactic:20", "apodize_deg": 5.0}},
            "scatter": {"depth": 2, "J0": 3},
            "models": {"hybrid": {"epochs": 1, "batch_size": 8}, "powspec": {}, "cubic": {}},
            "compare_to": ["cubic"]}


def test_observed_experiment_runs_every_setting_and_the_transfers(tmp_path):
    cfg = tiny_config(tmp_path)
    path = tmp_path / "observed.json"
    path.write_text(json.dumps(cfg))
    table = run_observed(path, device="cpu", progress=False)
    text = table.read_text()
    assert "| scattering + DISCO CNN (hybrid) |" in text and "loss, beam + noise + mask" in text
    assert "trained on full sky, noiseless, applied to beam + noise + mask" in text
    out = tmp_path / "out"
    plain, masked = out / "full_sky_noiseless", out / "beam_noise_mask"
    # the same skies: the masked setting's maps are the plain ones observed
    with h5py.File(plain / "sims_test.h5") as a, h5py.File(masked / "sims_test.h5") as b:
        assert np.array_equal(a["seeds"][()], b["seeds"][()]) and "mask" in b and "mask" not in a
        assert b.attrs["beam_fwhm_arcmin"] == 60.0
    with h5py.File(masked / "scat_test.h5") as f:
        assert "weight" in f
    moved = json.loads((plain / "runs" / "hybrid" / "seed0" / "on_beam_noise_mask" / "metrics.json").read_text())
    assert moved["n"] == 16
    # a second run reuses everything and writes the same table
    again = run_observed(path, device="cpu", progress=False).read_text()
    assert again == text


def test_transfer_summary_counts_gaussian_maps_called_non_gaussian():
    metrics = [{"accuracy": 0.5, "n": 8, "confusion": [[1, 3], [1, 3]]},
               {"accuracy": 0.75, "n": 8, "confusion": [[3, 1], [1, 3]]}]
    t = transfer_summary(metrics)
    assert t["accuracy"] == 0.625 and t["gaussian_called_non_gaussian"] == 0.5


def test_setting_folders_are_slugs(tmp_path):
    assert setting_folder(tmp_path, "Beam + noise + mask").name == "beam_noise_mask"


def test_observations_config_refuses_scan(tmp_path):
    path = tmp_path / "observed.json"
    path.write_text(json.dumps(tiny_config(tmp_path)))
    assert_one_line_error(run_cli("pipeline", str(path), "--scan"), "observations")


def test_observed_table_rows_have_the_header_s_columns():
    """One setting or three: every row of the table has as many cells as its header."""
    from types import SimpleNamespace

    import numpy as np

    from cmbscat.experiment.observed_experiment import observed_table

    result = SimpleNamespace(accuracies=np.array([0.9, 0.8]), labels=np.zeros(100))
    for names in (["full sky"], ["full sky", "beam", "mask"]):
        cfg = {"simulate": {"lmax": 63, "nside": 32, "fnl": 30, "n_train": 10, "n_test": 100,
                            "seed_train": 1, "seed_test": 2},
               "observations": {n: {} for n in names}, "models": {"hybrid": {}, "cubic": {}}}
        transfers = {n: {"hybrid": {"accuracy": 0.5, "gaussian_called_non_gaussian": 1.0}} for n in names[1:]}
        table = observed_table(cfg, {n: {"hybrid": result, "cubic": result} for n in names}, transfers)
        rows = [line for line in table.splitlines() if line.startswith("|")]
        assert len(rows) == 4
        assert {row.count("|") for row in rows} == {1 + 1 + len(names) + 2 * (len(names) - 1)}, rows

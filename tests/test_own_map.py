"""A user's own HEALPix FITS map in, a verdict out: the README's "Your own map" commands run
as written, and what they rest on: the map's unit read from its header (K_CMB, mK_CMB, uK_CMB;
anything else refused in one line unless --unit says it), its monopole and dipole removed on
the unmasked pixels, a run's default --reference found from any working directory, and
``cmbscat evaluate RUN MAP.fits`` making the model's input with the settings the run records.

The README test (``test_readme_own_map_commands``, slow) reads the fenced bash block between
``<!-- own-map:begin -->`` and ``<!-- own-map:end -->`` of README.md (or of the draft
/tmp/own_map_block.md while README.md lacks the markers) and runs its commands with bash, as
written, in a temporary folder that holds:

* ``pipelines/smoke.json``, the repository's with its models cut to those the block reads
  (the hybrid, seed 0 only, and cubic, whose stage makes the statistics files), and
  ``runs/smoke/``, made there by ``cmbscat pipeline pipelines/smoke.json``: the files the
  block uses are those ``make smoke`` makes (seed 0's model.pt has the same hash), the other
  models are left out to save time;
* ``.venv/bin/python`` and ``.venv/bin/cmbscat``: two-line shell scripts that exec the Python
  running the tests (``sys.executable``, and ``sys.executable -m cmbscat``). This is the only
  substitution: ``.venv/bin/...`` in the block then means this interpreter, wherever its venv is.

The block's first command writes its own example map (a Gaussian sky in K_CMB with a 50 uK
offset), and the whole block runs as written on it; the outputs it shows (``# map 0: ...``)
must be the ones this run gives. Then its evaluate commands run again, as written (the map
maker and the anchor's training, done, are not repeated), in folders of their own (``runs``
and ``.venv`` linked in), on maps the test writes as ``my_map.fits``: an f_NL = 2000 map of the smoke run's test sims in uK; the same sky at nside 64
in K_CMB with a 50 uK monopole and a 30 uK dipole, with ``--mask my_mask.fits --force`` (a
|b| < 20 deg cut at nside 128) added to each evaluate command; and that sky in uK without the
offset, with the same additions. The smoke models were trained on the full sky, so a masked map
needs --force (without it: refused in one line), and their masked verdict is not a right one;
what the masked pair checks is that unit, offset and mask regrade change nothing.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import healpy as hp
import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- own-map:begin -->", "<!-- own-map:end -->"
DRAFT = Path("/tmp/own_map_block.md")  # read while README.md has no such block yet
P_LINE = re.compile(r"map 0: one-sided p = (\S+) \(.*?the map counted: (\d+) of (\d+);.*score ([+-]\S+) \(logit")
FNL_LINE = re.compile(r"map 0: f_NL = (\S+) \+/- (\S+) \(1 sigma\)")


# -- the README block ----------------------------------------------------------------------------

def own_map_block() -> str:
    """The fenced bash block between the own-map markers (README.md, else the draft)."""
    text = (REPO / "README.md").read_text()
    if BEGIN not in text:
        if not DRAFT.exists():
            pytest.skip("README.md has no own-map block yet, and there is no draft at /tmp/own_map_block.md")
        text = DRAFT.read_text()
    section = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    fenced = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert fenced, "the own-map markers hold no ```bash block"
    return fenced.group(1)


def block_commands(block: str) -> list[tuple[str, list[str]]]:
    """(command, the '# map 0: ...' comment lines after it: its output as the README shows it)."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            if out and line.startswith("# map "):
                out[-1][1].append(line[2:])
            continue
        out.append((line, []))
    return out


def fake_venv(root: Path) -> None:
    """``root/.venv/bin/python`` and ``cmbscat``: scripts that exec this interpreter."""
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, tail in (("python", ""), ("cmbscat", " -m cmbscat")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)}{tail} "$@"\n')
        script.chmod(0o755)


def run_bash(commands: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The commands, one bash script (stopping at the first that fails), in ``cwd``."""
    proc = subprocess.run(["bash", "-e", "-c", "\n".join(commands)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    assert proc.returncode == 0, f"{commands}\n{proc.stdout}\n{proc.stderr}"
    return proc


def verdicts(stdout: str) -> dict:
    """The block's two verdict lines: the classifier's (p, k, n, score) and the estimator's
    (f_NL, sigma)."""
    p_lines = [P_LINE.search(line) for line in stdout.splitlines() if "one-sided p" in line]
    fnl_lines = [FNL_LINE.search(line) for line in stdout.splitlines() if "f_NL =" in line]
    assert len(p_lines) == 1 and p_lines[0] and len(fnl_lines) == 1 and fnl_lines[0], stdout
    p, k, n, score = p_lines[0].groups()
    fnl, sigma = fnl_lines[0].groups()
    return {"p": float(p), "k": int(k), "n": int(n), "score": float(score), "fnl": float(fnl),
            "sigma": float(sigma), "floor": 1.0 / (1 + int(n))}


def case_folder(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    for link in ("runs", ".venv"):
        (folder / link).symlink_to(root / link)
    return folder


def write_map(path: Path, values: np.ndarray, unit: str) -> None:
    hp.write_map(str(path), values, column_units=unit, dtype=np.float64, overwrite=True)


@pytest.mark.slow
def test_readme_own_map_commands(tmp_path):
    commands = block_commands(own_map_block())
    assert commands[0][0].startswith(".venv/bin/python -c") and "my_map.fits" in commands[0][0]
    evaluates = [c for c, _ in commands if " evaluate " in c]
    assert len(evaluates) == 2 and all("my_map.fits" in c for c in evaluates)
    root = tmp_path
    fake_venv(root)
    (root / "pipelines").mkdir()
    config = json.loads((REPO / "pipelines" / "smoke.json").read_text())
    config["models"] = {"hybrid": {**config["models"]["hybrid"], "seeds": [0]}, "cubic": config["models"]["cubic"]}
    (root / "pipelines" / "smoke.json").write_text(json.dumps(config, indent=2))
    run_bash([".venv/bin/cmbscat pipeline pipelines/smoke.json --no-progress"], root)

    # 1. the block as written, its own example map (Gaussian, K_CMB, 50 uK offset)
    example = case_folder(root, "example")
    proc = run_bash([c for c, _ in commands], example)
    gaussian = verdicts(proc.stdout)
    assert "unit 'K_CMB' (TUNIT1): pixels multiplied by 1e+06" in proc.stderr
    assert re.search(r"monopole \+50(\.\d+)? uK", proc.stderr), proc.stderr
    assert gaussian["p"] > 0.1 and gaussian["k"] >= 1          # not detected
    assert abs(gaussian["fnl"]) < 3 * gaussian["sigma"]          # f_NL consistent with 0
    # the outputs the README shows are the ones this run gives (p, counts; f_NL and sigma)
    shown = "\n".join(line for _, lines in commands for line in lines)
    if shown:
        expected = verdicts(shown)
        for key in ("p", "k", "n", "fnl", "sigma"):
            assert expected[key] == pytest.approx(gaussian[key], rel=1e-3), (key, shown, proc.stdout)

    rest = [c for c, _ in commands[1:] if " train " not in c]  # the anchor is trained already
    masked = [c + " --mask my_mask.fits --force" if " evaluate " in c else c for c in rest]
    with h5py.File(root / "runs" / "smoke" / "sims_test.h5", "r") as f:
        assert f["labels"][1] == 1 and f["fnl"][1] == 2000.0
        alm = f["alm"][1].astype(np.complex128)
        lmax = int(f.attrs["lmax"])

    # 2. a non-Gaussian map (f_NL 2000, the toy model) in uK: detected
    ng = case_folder(root, "non_gaussian")
    write_map(ng / "my_map.fits", hp.alm2map(alm, 32, lmax=lmax), "uK")
    found = verdicts(run_bash(rest, ng).stdout)
    assert found["k"] == 0 and found["p"] == pytest.approx(found["floor"], rel=1e-3)  # above every Gaussian map
    assert found["fnl"] > 5 * found["sigma"]

    # 3. the same sky Planck-style: nside 64, K_CMB, a 50 uK monopole and a 30 uK dipole, and a
    # mask of nside 128; against that sky in uK without them (same mask): the same verdict
    from cmbscat.sky.observe import galactic_cut

    sky = hp.alm2map(alm, 64, lmax=lmax)
    x, _, z = hp.pix2vec(64, np.arange(sky.size))
    results = {}
    for name, values, unit in (("planck_style", 1e-6 * (sky + 50.0 + 30.0 * (0.6 * x - 0.8 * z)), "K_CMB"),
                               ("clean", sky, "uK_CMB")):
        folder = case_folder(root, name)
        write_map(folder / "my_map.fits", values, unit)
        hp.write_map(str(folder / "my_mask.fits"), galactic_cut(128, 20.0).astype(np.float64), dtype=np.float64)
        proc = run_bash(masked, folder)
        results[name] = verdicts(proc.stdout)
        assert "--mask my_mask.fits: nside 128 regraded to 32" in proc.stderr, proc.stderr
    a, b = results["planck_style"], results["clean"]
    assert (a["p"], a["k"], a["n"]) == (b["p"], b["k"], b["n"])
    assert a["score"] == pytest.approx(b["score"], abs=2e-4)    # printed to 4 decimals
    assert a["fnl"] == pytest.approx(b["fnl"], rel=1e-3) and a["sigma"] == b["sigma"]
    # without --force the full-sky model refuses the masked map, in one line, before any work
    anchor = [c for c in rest if " evaluate " in c][-1].split()
    proc = subprocess.run([*anchor, "--mask", "my_mask.fits"], cwd=root / "clean", capture_output=True,
                          text=True)
    assert_one_line_error(proc, "trained on the full sky", "--force")


# -- units ---------------------------------------------------------------------------------------

NSIDE, LMAX = 16, 31


@pytest.fixture(scope="module")
def sky():
    """A Gaussian sky in uK at NSIDE (l = 0, 1 zero, as the simulations')."""
    from cmbscat.sky.spectra import planck2018_cl

    np.random.seed(3)
    return hp.synfast(planck2018_cl(LMAX), NSIDE, lmax=LMAX)


@pytest.mark.parametrize("text, unit", [
    ("K", "K_CMB"), ("K_CMB", "K_CMB"), ("Kcmb", "K_CMB"), ("KCMB", "K_CMB"), ("k_cmb", "K_CMB"),
    ("Kelvin", "K_CMB"), ("mK", "mK_CMB"), ("mK_CMB", "mK_CMB"), ("MK_CMB", "mK_CMB"),
    ("uK", "uK_CMB"), ("uK_CMB", "uK_CMB"), ("muK", "uK_CMB"), ("microK", "uK_CMB"),
    ("\u03bcK", "uK_CMB"), ("\u00b5K_CMB", "uK_CMB"), (" uK (CMB) ", "uK_CMB"),
    ("Jy/sr", None), ("MJy/sr", None), ("K_RJ", None), ("KRJ", None), ("uK^2", None), ("", None),
    ("counts", None),
])
def test_unit_spellings(text, unit):
    from cmbscat.sky.fits_map import parse_unit

    assert parse_unit(text) == unit


@pytest.mark.parametrize("unit, scale", [("K_CMB", 1e-6), ("mK", 1e-3), ("uK_CMB", 1.0), ("muK", 1.0)])
def test_a_map_is_read_in_uK_whatever_its_unit(sky, tmp_path, unit, scale):
    from cmbscat.sky.source import open_source

    write_map(tmp_path / "m.fits", sky * scale, unit)
    source = open_source(tmp_path / "m.fits", note=lambda line: None)
    reference = open_source(write_uK(sky, tmp_path), note=lambda line: None)
    assert np.allclose(source.fits_map, reference.fits_map, rtol=1e-12, atol=1e-10)
    info = source.fits_info
    assert info["map_unit"] == unit and info["unit_from"] == "header"
    assert info["unit_factor_to_uK"] == pytest.approx(1 / scale)


def write_uK(values, folder: Path) -> Path:
    path = folder / "reference_uK.fits"
    write_map(path, values, "uK_CMB")
    return path


def test_the_unit_and_factor_are_recorded_in_the_output(sky, tmp_path):
    write_map(tmp_path / "m.fits", 1e-6 * sky, "K_CMB")
    code, _, stderr = invoke("stats", tmp_path / "m.fits", tmp_path / "s.h5", "--no-progress")
    assert code == 0, stderr
    assert "unit 'K_CMB' (TUNIT1): pixels multiplied by 1e+06 to uK" in stderr
    with h5py.File(tmp_path / "s.h5", "r") as f:
        attrs = dict(f.attrs)
        params = json.loads(attrs["cmbscat_params"])["fits_map"]
    assert attrs["map_unit"] == "K_CMB" and attrs["unit"] == "K_CMB" and attrs["unit_factor_to_uK"] == 1e6
    assert params["unit_factor_to_uK"] == 1e6 and params["monopole_dipole"].startswith("removed")


def test_a_missing_or_unknown_unit_is_refused_in_one_line_and_nothing_is_written(sky, tmp_path):
    hp.write_map(str(tmp_path / "none.fits"), sky, dtype=np.float64)  # no TUNIT1
    write_map(tmp_path / "jy.fits", sky, "Jy/sr")
    for name, fragment in (("none.fits", "has no unit in its header (TUNIT1); give --unit uK_CMB"),
                           ("jy.fits", "unit 'Jy/sr' is not a CMB temperature unit; give --unit uK_CMB "
                                       "(or K_CMB, mK_CMB) if the map is one")):
        for command in ("scatter", "stats"):
            out = tmp_path / f"{command}.h5"
            code, stdout, stderr = invoke(command, tmp_path / name, out, "--no-progress")
            lines = [line for line in stderr.splitlines() if line.strip()]
            assert code == 1 and not stdout and len(lines) == 1, stderr
            assert lines[0].startswith(f"Error: {tmp_path / name}") and fragment in lines[0], stderr
            assert not [p for p in tmp_path.iterdir() if p.name.startswith(command)]  # nothing written
    # a real process: no traceback, one line
    assert_one_line_error(run_cli("scatter", tmp_path / "jy.fits", tmp_path / "scatter.h5"), "Jy/sr")
    assert not (tmp_path / "scatter.h5").exists()
    # --unit says it (and wins over a header that names another unit, with a note)
    code, _, stderr = invoke("stats", tmp_path / "jy.fits", tmp_path / "ok.h5", "--unit", "uK", "--no-progress")
    assert code == 0 and "overridden by --unit uK_CMB" in stderr, stderr
    with h5py.File(tmp_path / "ok.h5", "r") as f:
        assert f.attrs["unit_from"] == "--unit" and f.attrs["map_unit"] == "Jy/sr"
    # an unknown --unit, and --unit with a sims file, are refused too
    code, _, stderr = invoke("stats", tmp_path / "none.fits", tmp_path / "x.h5", "--unit", "Jy")
    assert code == 1 and stderr.strip() == "Error: --unit 'Jy' is not a CMB temperature unit; give uK_CMB " \
                                           "(or K_CMB, mK_CMB)", stderr
    assert not (tmp_path / "x.h5").exists()


def test_unit_on_a_sims_file_is_refused(tmp_path):
    from cmbscat.errors import CmbscatError
    from cmbscat.sky.fits_map import fits_reading
    from cmbscat.sky.simulate import SimulationConfig, simulate
    from cmbscat.sky.source import open_source

    simulate(tmp_path / "s.h5", SimulationConfig(2, NSIDE, LMAX, 2000.0, 1, store="alm"), progress=False)
    with fits_reading("K_CMB"), pytest.raises(CmbscatError, match="--unit and --keep-dipole describe a FITS"):
        open_source(tmp_path / "s.h5")
    with fits_reading(None, remove_dipole=False), pytest.raises(CmbscatError, match="is a sims file"):
        open_source(tmp_path / "s.h5")


# -- monopole and dipole -------------------------------------------------------------------------

def test_monopole_and_dipole_are_removed_before_anything_uses_the_map(sky, tmp_path):
    """A map plus 50 uK and a 30 uK dipole gives the statistics of the map: the fit is linear,
    so both become the same map up to rounding (values ~100 uK in float64, and the stored
    map's K_CMB conversion: < 1e-9 uK measured as 1e-12), hence every statistic to 1e-8
    relative. Without the removal the same offset moves the cubic statistic by tens of sigma."""
    from cmbscat.experiment.fnl_estimators import CubicFisherEstimator
    from cmbscat.sky.fits_map import fits_reading
    from cmbscat.sky.source import open_source
    from cmbscat.stats.stage import compute_stats

    estimator = CubicFisherEstimator(LMAX)
    x, y, z = hp.pix2vec(NSIDE, np.arange(sky.size))
    dipole = 30.0 * np.array([0.48, -0.6, 0.64])
    write_map(tmp_path / "offset.fits", 1e-6 * (sky + 50.0 + dipole @ np.stack([x, y, z])), "K_CMB")
    write_uK(sky, tmp_path)
    notes = []
    offset = open_source(tmp_path / "offset.fits", note=notes.append)
    clean = open_source(tmp_path / "reference_uK.fits", note=lambda line: None)
    assert np.abs(offset.fits_map - clean.fits_map).max() < 1e-9
    assert offset.fits_info["monopole_uK"] == pytest.approx(50.0, abs=0.05)
    assert offset.fits_info["dipole_vector_uK"] == pytest.approx(dipole.tolist(), abs=0.05)
    assert any("monopole +50" in line and "fitted on the full sky and removed" in line for line in notes)
    # on the full sky the fit of a map without them is at the level of the quadrature
    assert abs(clean.fits_info["monopole_uK"]) < 0.05 and clean.fits_info["dipole_uK"] < 0.05
    for name in ("offset", "reference_uK"):
        compute_stats(tmp_path / f"{name}.fits", tmp_path / f"{name}.h5", progress=False)
    with fits_reading(None, remove_dipole=False):
        compute_stats(tmp_path / "offset.fits", tmp_path / "kept.h5", progress=False)
    with h5py.File(tmp_path / "offset.h5", "r") as a, h5py.File(tmp_path / "reference_uK.h5", "r") as b, \
            h5py.File(tmp_path / "kept.h5", "r") as c:
        for stat in ("powspec", "onepoint", "cubic", "minkowski"):
            assert np.allclose(a[stat][()], b[stat][()], rtol=1e-8, atol=1e-8 * np.abs(b[stat][()]).max()), stat
        assert a.attrs["monopole_uK"] == pytest.approx(50.0, abs=0.05)
        assert c.attrs["monopole_dipole"] == "kept (--keep-dipole)"
        kept_fnl, _ = estimator.predict(c["cubic"][()])
        clean_fnl, sigma = estimator.predict(b["cubic"][()])
    assert abs(kept_fnl[0] - clean_fnl[0]) > 10 * sigma[0]


def test_a_masked_map_is_fitted_on_its_unmasked_pixels(sky, tmp_path):
    """With a mask (another nside) and UNSEEN pixels, the fit uses the valid observed pixels:
    the offset map and the clean one again become the same map there."""
    from cmbscat.sky.observe import ObservationConfig, galactic_cut
    from cmbscat.sky.source import open_source

    x, _, _ = hp.pix2vec(NSIDE * 2, np.arange(hp.nside2npix(NSIDE * 2)))
    fine = hp.alm2map(hp.map2alm(sky, lmax=LMAX, iter=3), NSIDE * 2, lmax=LMAX)
    dirty = fine + 50.0 + 30.0 * x
    dirty[:40] = hp.UNSEEN
    clean = fine.copy()
    clean[:40] = hp.UNSEEN
    write_map(tmp_path / "dirty.fits", np.where(dirty == hp.UNSEEN, hp.UNSEEN, 1e-6 * dirty), "K_CMB")
    write_map(tmp_path / "clean.fits", clean, "uK")
    hp.write_map(str(tmp_path / "mask.fits"), galactic_cut(64, 20.0).astype(float), dtype=np.float64)
    observation = ObservationConfig(mask=str(tmp_path / "mask.fits"), apodize_deg=5.0)
    a = open_source(tmp_path / "dirty.fits", observation=observation, nside=NSIDE, note=lambda line: None)
    b = open_source(tmp_path / "clean.fits", observation=observation, nside=NSIDE, note=lambda line: None)
    assert np.abs(a.fits_map - b.fits_map).max() < 1e-8
    assert np.array_equal(a.mask, b.mask)
    n_fit = a.fits_info["dipole_fit_pixels"]
    assert 0 < n_fit < dirty.size - 40


# -- evaluate: a FITS map given directly, the default reference from anywhere ---------------------

def invoke(*args):
    """The CLI in this process: (exit code, stdout, stderr)."""
    from click.testing import CliRunner

    from cmbscat.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny project made with relative paths from its own folder (as a user's commands run
    there would): sims, stats, a cubic classifier evaluated on its test stats (so that
    metrics.json names them)."""
    from cmbscat.experiment.evaluate import evaluate
    from cmbscat.experiment.train import TrainConfig, train
    from cmbscat.sky.simulate import SimulationConfig, simulate
    from cmbscat.stats.stage import compute_stats

    root = tmp_path_factory.mktemp("project")
    here = os.getcwd()
    os.chdir(root)
    try:
        for name, n, seed in (("train", 16, 1), ("test", 16, 2)):
            simulate(f"sims_{name}.h5", SimulationConfig(n, NSIDE, LMAX, 3000.0, seed, store="alm"), progress=False)
            compute_stats(f"sims_{name}.h5", f"stats_{name}.h5", progress=False)
        train("runs/cubic", TrainConfig(data="stats_train.h5", model="cubic"), device="cpu", progress=False)
        evaluate("runs/cubic", "stats_test.h5", progress=False)
    finally:
        os.chdir(here)
    return root


def test_the_run_records_its_input_settings_and_an_absolute_test_file(project):
    record = json.loads((project / "runs" / "cubic" / "input.json").read_text())
    assert record["stage"] == "stats" and record["options"] == ["--nside", str(NSIDE), "--lmax", str(LMAX)]
    metrics = json.loads((project / "runs" / "cubic" / "metrics.json").read_text())
    assert metrics["test_file"] == str((project / "stats_test.h5").resolve())
    assert metrics["test_file_from_out"] == os.path.join("..", "..", "stats_test.h5")


def test_evaluate_makes_a_fits_maps_input_and_finds_its_reference_from_another_cwd(project, sky, tmp_path,
                                                                                    monkeypatch):
    write_map(tmp_path / "map.fits", 1e-6 * (sky + 50.0), "K_CMB")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # neither the project's folder nor the repository
    run = project / "runs" / "cubic"

    def score(out):
        code, stdout, stderr = invoke("evaluate", run, tmp_path / "map.fits", "--out", elsewhere / out,
                                      "--no-progress")
        assert code == 0, stderr
        assert f"made this model's input as `cmbscat stats {tmp_path / 'map.fits'} map_stats.h5 --nside " \
               f"{NSIDE} --lmax {LMAX}`" in stderr
        assert stdout.startswith("map 0: one-sided p = ") and "a score, not a calibrated probability" in stdout
        return json.loads((elsewhere / out / "scores.json").read_text())

    result = score("a")
    assert result["reference"] == str((project / "stats_test.h5").resolve())
    assert result["fits_map"] == str((tmp_path / "map.fits").resolve()) and "input_command" in result
    # a metrics.json from before, naming its test file relative to where it was run
    metrics_path = run / "metrics.json"
    saved = metrics_path.read_text()
    try:
        metrics = json.loads(saved)
        metrics["test_file"] = "stats_test.h5"
        del metrics["test_file_from_out"]
        metrics_path.write_text(json.dumps(metrics))
        again = score("b")
        assert again["reference"] == str((project / "stats_test.h5").resolve())
        assert again["maps"][0]["p_value"] == result["maps"][0]["p_value"]
    finally:
        metrics_path.write_text(saved)


def test_a_fits_map_where_a_stage_file_is_read_gets_the_command_to_run(project, sky, tmp_path):
    from cmbscat.errors import CmbscatError
    from cmbscat.experiment.evaluate import score_maps

    write_map(tmp_path / "map.fits", sky, "uK")
    with pytest.raises(CmbscatError) as err:
        score_maps(project / "runs" / "cubic", tmp_path / "map.fits", out_dir=tmp_path / "o", progress=False)
    assert f"map.fits is a FITS map: make this model's input first: cmbscat stats {tmp_path / 'map.fits'} " \
           f"map_stats.h5 --nside {NSIDE} --lmax {LMAX}" in err.value.message
    assert "\n" not in err.value.message
    # a run that records no settings, whose training file is gone: one line saying so
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.pkl", "metrics.json"):
        shutil.copy(project / "runs" / "cubic" / name, bare / name)
    config = json.loads((project / "runs" / "cubic" / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps({**config, "data": "gone.h5"}))
    assert_one_line_error(run_cli("evaluate", bare, tmp_path / "map.fits", "--out", tmp_path / "e",
                                  cwd=tmp_path), "has no input.json")
    # FITS options with a stage file
    code, _, stderr = invoke("evaluate", project / "runs" / "cubic", project / "stats_test.h5", "--unit", "K",
                             "--out", tmp_path / "f")
    assert code == 1 and stderr.startswith("Error: --unit describe a FITS map TEST") and not (tmp_path / "f").exists()

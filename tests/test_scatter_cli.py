"""The `cmbscat scatter` stage end to end: layout, resume, shards + combine, FITS, bad input."""

import subprocess
import sys

import h5py
import healpy as hp
import numpy as np
import pytest
from click.testing import CliRunner

from cmbscat.scattering import stage as scatter_stage
from cmbscat.cli import main
from cmbscat.scattering.transform import Scattering

LMAX, NSIDE, N = 31, 16, 4
ARGS = ["--depth", "2", "--J0", "3", "--no-progress"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    d = tmp_path_factory.mktemp("sims")
    path = d / "sims.h5"
    r = run("simulate", path, "--n-maps", N, "--nside", NSIDE, "--lmax", LMAX, "--seed", 3,
            "--no-progress")
    assert r.exit_code == 0, r.output
    return path


@pytest.fixture(scope="module")
def reference(sims, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "scat.h5"
    r = run("scatter", sims, out, *ARGS)
    assert r.exit_code == 0, r.output
    return out


def test_layout_and_values(sims, reference):
    sc = Scattering(LMAX, nside=NSIDE, depth=2, J0=3)
    with h5py.File(reference, "r") as f, h5py.File(sims, "r") as s:
        coeffs = f["coeffs"][()]
        assert coeffs.dtype == np.float32
        assert coeffs.shape == (N, sc.n_channels, hp.nside2npix(sc.nside_out))
        assert np.array_equal(f["labels"][()], s["labels"][()])
        assert np.array_equal(f["seeds"][()], s["seeds"][()])
        assert np.array_equal(f["paths"][()], sc.paths_array())
        a = f.attrs
        assert a["kind"] == "scattering" and a["lmax"] == LMAX and a["J0"] == 3
        assert a["depth"] == 2 and a["lam"] == 2.0 and a["nside_out"] == sc.nside_out
        assert a["source"].startswith("sims.h5 content-sha256:") and len(a["source"]) == 23 + 64
        assert a["source"].endswith(s.attrs["content_sha256"])
        assert "cmbscat_version" in a
        for i in range(N):
            expected = sc(s["alm"][i].astype(np.complex128))
            assert np.allclose(coeffs[i], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_rerun_is_noop_and_other_params_refused(sims, reference):
    assert run("scatter", sims, reference, *ARGS).exit_code == 0
    r = run("scatter", sims, reference, "--depth", "1", "--J0", "3", "--no-progress")
    assert r.exit_code != 0 and "different parameters" in r.output


def test_resume_after_interruption(sims, reference, tmp_path, monkeypatch):
    out = tmp_path / "scat.h5"
    calls = []
    original = Scattering.__call__

    def failing(self, x):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return original(self, x)

    monkeypatch.setattr(Scattering, "__call__", failing)
    with pytest.raises(KeyboardInterrupt):
        scatter_stage.scatter(sims, out, depth=2, J0=3, progress=False)
    assert not out.exists()
    assert len(list((tmp_path / "scat.h5.partial").glob("item*.npz"))) == 2

    monkeypatch.setattr(Scattering, "__call__", original)
    computed = scatter_stage.scatter(sims, out, depth=2, J0=3, progress=False)
    assert computed == N - 2          # finished maps are not recomputed
    assert not (tmp_path / "scat.h5.partial").exists()
    with h5py.File(out, "r") as a, h5py.File(reference, "r") as b:
        assert np.array_equal(a["coeffs"][()], b["coeffs"][()])


def test_shards_combine_equal_unsharded(sims, reference, tmp_path):
    parts = []
    for k in range(3):
        p = tmp_path / f"part{k}.h5"
        r = run("scatter", sims, p, *ARGS, "--shard", f"{k}/3")
        assert r.exit_code == 0, r.output
        parts.append(p)
    combined = tmp_path / "all.h5"
    r = run("combine", combined, *parts)
    assert r.exit_code == 0, r.output
    with h5py.File(combined, "r") as a, h5py.File(reference, "r") as b:
        assert a["coeffs"].is_virtual
        for name in ("coeffs", "labels", "seeds", "paths"):
            assert np.array_equal(a[name][()], b[name][()]), name
        for key in ("lmax", "J0", "depth", "nside_out", "source", "kind"):
            assert a.attrs[key] == b.attrs[key]


def test_maps_only_sims_and_fits_input(tmp_path, sims, reference):
    maps_only = tmp_path / "maps.h5"
    assert run("simulate", maps_only, "--n-maps", N, "--nside", NSIDE, "--lmax", LMAX,
               "--seed", 3, "--store", "maps", "--no-progress").exit_code == 0
    out = tmp_path / "from_maps.h5"
    r = run("scatter", maps_only, out, *ARGS)
    assert r.exit_code == 0, r.output
    with h5py.File(out, "r") as a, h5py.File(reference, "r") as b:
        assert a.attrs["input"] == "maps"
        x, y = a["coeffs"][()], b["coeffs"][()]
        assert np.linalg.norm(x - y) < 1e-3 * np.linalg.norm(y)
        one_map = h5py.File(maps_only, "r")["maps"][1]
        first = y[1]
    fits = tmp_path / "sky.fits"
    hp.write_map(str(fits), one_map, dtype=np.float32, column_units="uK")
    out2 = tmp_path / "from_fits.h5"
    r = run("scatter", fits, out2, *ARGS, "--lmax", LMAX)
    assert r.exit_code == 0, r.output
    with h5py.File(out2, "r") as a:
        assert a["coeffs"].shape == (1,) + first.shape
        assert a["labels"][()].tolist() == [-1] and a["seeds"][()].tolist() == [-1]
        assert np.linalg.norm(a["coeffs"][0] - first) < 1e-3 * np.linalg.norm(first)
    gz = tmp_path / "sky.fits.gz"
    hp.write_map(str(gz), one_map, dtype=np.float32, column_units="uK")
    assert run("scatter", gz, tmp_path / "gz.h5", *ARGS, "--lmax", LMAX).exit_code == 0
    with h5py.File(out2, "r") as a, h5py.File(tmp_path / "gz.h5", "r") as b:
        assert np.array_equal(a["coeffs"][()], b["coeffs"][()])
    r = run("scatter", fits, tmp_path / "x.h5", *ARGS, "--lmax", 3 * NSIDE)
    assert r.exit_code != 0 and "above the input's lmax 47" in r.output


def _one_line_error(result):
    assert result.exit_code != 0
    lines = [ln for ln in result.output.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_bad_inputs_one_line(sims, reference, tmp_path):
    junk = tmp_path / "junk.txt"
    junk.write_text("not a map")
    cases = [
        ((junk, "o1.h5"), "neither a cmbscat sims file"),
        ((reference, "o2.h5"), "is a scattering file, not a sims file"),
        ((tmp_path / "missing.h5", "o3.h5"), "does not exist"),
        ((sims, "o4.h5", "--J0", "9"), "--J0 must be in 0..5"),
        ((sims, "o5.h5", "--J0", "-1"), "--J0 must be in 0..5"),
        ((sims, "o6.h5", "--lmax", "64"), "above the input's lmax 31"),
        ((sims, "o7.h5", "--depth", "4"), "--depth must be 1, 2 or 3"),
        ((sims, "o8.h5", "--depth", "0"), "--depth must be 1, 2 or 3"),
        ((sims, "o9.h5", "--lam", "1"), "--lam must be > 1"),
        ((sims, "o10.h5", "--shard", "3/2"), "--shard"),
        ((sims, "o11.h5", "--oversample", "0.5"), "--oversample must be >= 1"),
        ((sims, "o12.h5", "--min-nside", "-1"), "--min-nside must be >= 0"),
    ]
    for args, message in cases:
        args = [a if not str(a).startswith("o") else tmp_path / a for a in args]
        line = _one_line_error(run("scatter", *args, "--no-progress"))
        assert message in line, (args, line)
        assert not any(tmp_path.glob("o*.h5*")), args  # nothing written on refusal


def test_real_process_prints_one_line(sims, tmp_path):
    p = subprocess.run([sys.executable, "-m", "cmbscat", "scatter", str(sims), str(tmp_path / "o.h5"),
                        "--depth", "5"], capture_output=True, text=True)
    assert p.returncode != 0
    assert p.stderr.strip() == "Error: --depth must be 1, 2 or 3, got 5"

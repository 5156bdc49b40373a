"""The per-map stages on Dask: a LocalCluster gives the files of one process; CLI refusals."""

import json

import pytest

from cmbscat.experiment.executor import ShardExecutor
from cmbscat.experiment.pipeline import Experiment
from cmbscat.store import content_hash

from conftest import assert_one_line_error, run_cli

distributed = pytest.importorskip("dask.distributed")

SMOKE = {"simulate": {"nside": 32, "lmax": 63, "fnl": 2000, "store": "alm", "n_train": 12,
                      "n_test": 8, "seed_train": 1, "seed_test": 2},
         "scatter": {"depth": 2, "J0": 3, "odd": True},
         "models": {"hybrid": {}}}


def _per_map_files(out, workers, executor=None):
    exp = Experiment({**SMOKE, "out": str(out), "workers": workers}, "cpu", False, executor)
    files = []
    for split in ("train", "test"):
        for stage in (exp.simulate_stage(split), exp.scatter_stage(split), exp.stats_stage(split)):
            stage.run()
            files.append(stage.output)
    return files


def _one_process_files(out):
    """The same outputs from the stage commands run whole, one process each, one OpenMP
    thread as the shard tasks have (the pytest process's thread state is the suite's)."""
    out.mkdir()
    sim = SMOKE["simulate"]
    files = []
    for split in ("train", "test"):
        sims, scat, stats = (out / f"{kind}_{split}.h5" for kind in ("sims", "scat", "stats"))
        run_cli("simulate", sims, "--n-maps", sim[f"n_{split}"], "--nside", sim["nside"],
                "--lmax", sim["lmax"], "--fnl", sim["fnl"], "--seed", sim[f"seed_{split}"],
                "--store", "alm", "--no-progress", check=True, env={"OMP_NUM_THREADS": "1"})
        run_cli("scatter", sims, scat, "--depth", "2", "--J0", "3", "--odd", "--no-progress",
                check=True, env={"OMP_NUM_THREADS": "1"})
        run_cli("stats", sims, stats, "--no-progress", check=True, env={"OMP_NUM_THREADS": "1"})
        files += [sims, scat, stats]
    return files


def test_local_cluster_of_two_workers_writes_the_files_of_one_process(tmp_path):
    one = _one_process_files(tmp_path / "one")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with ShardExecutor("dask", scheduler=cluster.scheduler_address) as executor:
            two = _per_map_files(tmp_path / "two", workers=2, executor=executor)
            assert len(cluster.scheduler.workers) == 2
    for a, b in zip(one, two):
        assert (b.parent / "shards").exists()  # made of 2 shard files, joined
        assert content_hash(a) == content_hash(b), (a.name, b.name)


def test_executor_options_are_refused_in_one_line(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({**SMOKE, "out": str(tmp_path / "out")}))
    assert_one_line_error(run_cli("pipeline", config, "--scheduler", "tcp://127.0.0.1:1"),
                          "--executor dask")
    assert_one_line_error(run_cli("pipeline", config, "--executor", "dask", "--slurm"),
                          "'slurm' object")
    assert_one_line_error(run_cli("pipeline", config, "--executor", "dask", "--slurm",
                                  "--scheduler", "tcp://127.0.0.1:1"), "not both")


def test_slurm_cluster_takes_the_config_options():
    pytest.importorskip("dask_jobqueue")
    from cmbscat.experiment.executor import slurm_cluster

    cluster = slurm_cluster({"queue": "cosmo", "walltime": "02:00:00", "memory": "8GB"})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "-p cosmo" in script and "02:00:00" in script and "--nthreads 1" in script


def test_shard_tasks_do_not_inherit_the_dask_workers_malloc_setting(monkeypatch):
    """A Dask nanny gives its worker MALLOC_TRIM_THRESHOLD_=65536 (its memory management);
    the shard task's subprocess runs without it, with one OpenMP thread."""
    from cmbscat.experiment.executor import one_thread_env

    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    env = one_thread_env()
    assert "MALLOC_TRIM_THRESHOLD_" not in env and env["OMP_NUM_THREADS"] == "1"

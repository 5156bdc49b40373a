"""The CUDA path, checked in one command on a machine with a GPU (benchmarks/gpu_check.sh).

    python benchmarks/gpu_check.py [--part disco|train|epoch] [--threads N]

Prints one line per check, ``PASS`` / ``FAIL`` / ``TIME`` first, and exits non-zero if
any check fails (or if PyTorch sees no CUDA device):

* ``disco``: ``DiscoConvS2`` and ``DiscoConvTransposeS2`` on CUDA (``torch.sparse.mm``)
  against the CPU blocked kernels, float64, same weights and inputs: forward values and
  the gradients in the input and the weight (relative max error <= 1e-10).
* ``train``: ``cmbscat simulate / scatter --odd / train --device cuda / evaluate
  --device cuda`` on smoke-sized data (nside 32, lmax 63) in a temporary folder; the
  run's summary must name the CUDA device.
* ``epoch``: one training epoch of the hybrid network at the paper's size (1280 maps,
  42 channels at nside 16 -- the odd front-end's output at lmax 1023 -- batch 16, AdamW)
  on synthetic inputs, on the GPU and on the CPU (``--threads`` torch threads), and the
  cost of the rotation augmentation (on the device and on the CPU), beside the healpy
  loop it replaced (one thread). Times are
  wall-clock seconds measured in this run after one warm-up step.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # healpy in the augmentation timing: one thread

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

FAILED: list[str] = []


def report(status: str, name: str, detail: str) -> None:
    print(f"{status} {name}: {detail}", flush=True)
    if status == "FAIL":
        FAILED.append(name)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu(), b.detach().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def check_disco(device: str, tolerance: float = 1e-10) -> None:
    """CUDA against CPU kernels: values and both gradients, for both layer kinds."""
    from cmbscat.nn.disco import DiscoConvS2, DiscoConvTransposeS2

    torch.manual_seed(0)
    cases = [("DiscoConvS2 32->16", DiscoConvS2, (5, 7, 32, 16, 4), 32),
             ("DiscoConvS2 16->16 directional", DiscoConvS2, (5, 7, 16, 16, (3, 4)), 16),
             ("DiscoConvTransposeS2 16->32", DiscoConvTransposeS2, (5, 7, 16, 32, 4), 16)]
    for name, layer_cls, args, nside_in in cases:
        torch.set_default_dtype(torch.float64)  # the layer's weight and sparse tensor in float64
        try:
            cpu = layer_cls(*args)
        finally:
            torch.set_default_dtype(torch.float32)
        gpu = copy.deepcopy(cpu).to(device)
        x = torch.randn(3, args[0], 12 * nside_in ** 2, dtype=torch.float64)
        g, errors, outs = None, {}, {}
        for label, layer, xx in (("cpu", cpu, x.clone()), ("cuda", gpu, x.clone().to(device))):
            xx.requires_grad_(True)
            y = layer(xx)
            if g is None:
                g = torch.randn(y.shape, dtype=torch.float64)
            y.backward(g.to(y.device))
            outs[label] = (y, xx.grad, layer.weight.grad)
        for i, what in enumerate(("values", "input gradient", "weight gradient")):
            errors[what] = _rel(outs["cuda"][i], outs["cpu"][i])
        worst = max(errors.values())
        detail = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
        report("PASS" if worst <= tolerance else "FAIL", f"disco {name}",
               f"CUDA vs CPU relative max error: {detail} (tolerance {tolerance:g})")


def check_train(device: str) -> None:
    """The CLI's training and evaluation on CUDA, on smoke-sized data."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        cmd = [sys.executable, "-m", "cmbscat"]
        steps = [
            ["simulate", str(t / "sims_train.h5"), "--n-maps", "64", "--nside", "32", "--lmax", "63",
             "--fnl", "2000", "--seed", "1"],
            ["simulate", str(t / "sims_test.h5"), "--n-maps", "32", "--nside", "32", "--lmax", "63",
             "--fnl", "2000", "--seed", "2"],
            ["scatter", str(t / "sims_train.h5"), str(t / "scat_train.h5"), "--J0", "3", "--odd"],
            ["scatter", str(t / "sims_test.h5"), str(t / "scat_test.h5"), "--J0", "3", "--odd"],
            ["train", str(t / "scat_train.h5"), str(t / "run"), "--epochs", "3", "--batch-size", "8",
             "--device", device],
            ["evaluate", str(t / "run"), str(t / "scat_test.h5"), "--device", device],
        ]
        t0 = time.time()
        for step in steps:
            # run from the temporary folder: the repository's cmbscat/ (without its package
            # data) must not shadow the installed package
            proc = subprocess.run(cmd + step + ["--no-progress"], capture_output=True, text=True,
                                  cwd=t)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                report("FAIL", "train --device cuda", f"cmbscat {step[0]} failed: {last}")
                return
        summary = json.loads((t / "run" / "summary.json").read_text())
        metrics = json.loads((t / "run" / "metrics.json").read_text())
        ok = str(summary.get("device", "")).startswith(device)
        report("PASS" if ok else "FAIL", "train --device cuda",
               f"smoke data (nside 32, 64 + 32 maps): trained on {summary.get('device')}, "
               f"{summary.get('epochs_run')} epochs, test accuracy {metrics['accuracy']:.3f} "
               f"(n = {metrics['n']}), whole chain {time.time() - t0:.0f} s")


def _epoch_seconds(model, x, y, batch_size: int, device: str) -> float:
    import torch.nn.functional as F

    model.to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)

    def step(lo):
        xb, yb = x[lo:lo + batch_size].to(device), y[lo:lo + batch_size].to(device)
        loss = F.binary_cross_entropy_with_logits(model(xb), yb)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return loss

    step(0)  # warm-up: kernels, allocator, CPU block plans
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for lo in range(0, len(x), batch_size):
        loss = step(lo)
    loss.item()  # waits for the device
    return time.perf_counter() - t0


def check_epoch(device: str, threads: int, n_maps: int = 1280, channels: int = 42, nside: int = 16,
                batch_size: int = 16) -> None:
    """One hybrid training epoch at the paper's size, GPU and CPU, and the augmentation's cost."""
    from cmbscat.experiment.augment import RotationAugmenter, random_rotation_angles
    from cmbscat.nn.models import build_model

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n_maps, channels, 12 * nside ** 2, generator=gen)
    y = (torch.rand(n_maps, generator=gen) < 0.5).float()
    torch.manual_seed(0)
    gpu = _epoch_seconds(build_model("hybrid", channels, nside), x, y, batch_size, device)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cpu = _epoch_seconds(build_model("hybrid", channels, nside), x, y, batch_size, "cpu")
    report("TIME", "hybrid epoch",
           f"{n_maps} maps x {channels} channels at nside {nside}, batch {batch_size}: "
           f"{_device_name(device)} {gpu:.2f} s, CPU ({threads} threads) {cpu:.2f} s, "
           f"ratio {cpu / gpu:.1f}")
    coef = RotationAugmenter(nside).to_coefficients(x[:n_maps // 10].numpy()).astype(np.float32)
    for where in dict.fromkeys([device, "cpu"]):
        augmenter = RotationAugmenter(nside, device=where)
        batch = torch.from_numpy(coef[:batch_size]).to(where)
        rng = np.random.default_rng(0)
        angles = torch.from_numpy(random_rotation_angles(rng, batch_size))
        augmenter.rotate_tensor(batch, angles)  # warm-up
        if where.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            maps = augmenter.rotate_tensor(batch, angles)
        maps.sum().item()
        per_batch = (time.perf_counter() - t0) / 10
        report("TIME", f"rotation augmentation on {where}",
               f"one batch of {batch_size} x {channels} channels {per_batch * 1e3:.1f} ms: "
               f"{per_batch * n_maps / batch_size:.2f} s per epoch of {n_maps} maps")
    # the reference it replaced: healpy rotate_alm + alm2map per example and channel
    import healpy as hp

    from cmbscat.experiment.augment import real_to_alm

    alm = real_to_alm(coef[:batch_size].astype(np.float64), 2 * nside - 1)
    t0 = time.perf_counter()
    for example, (psi, theta, phi) in zip(alm, random_rotation_angles(np.random.default_rng(0), batch_size)):
        for channel in example:
            rotated = channel.copy()
            hp.rotate_alm(rotated, psi, theta, phi, lmax=2 * nside - 1, mmax=2 * nside - 1)
            hp.alm2map(rotated, nside, lmax=2 * nside - 1, pol=False)
    per_batch = time.perf_counter() - t0
    report("TIME", "rotation by healpy loop (reference)",
           f"one batch of {batch_size} x {channels} channels {per_batch * 1e3:.1f} ms on one CPU thread")


def _device_name(device: str) -> str:
    return f"GPU ({torch.cuda.get_device_name(device)})" if device.startswith("cuda") else device


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["disco", "train", "epoch"], action="append",
                        help="run only these checks (repeatable; default all)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch CPU threads for the CPU epoch (default: all cores)")
    parser.add_argument("--device", default="cuda",
                        help="device under test (default cuda; cpu only dry-runs this script)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("FAIL cuda: PyTorch sees no CUDA device; nothing checked", flush=True)
        return 1
    parts = args.part or ["disco", "train", "epoch"]
    for part in parts:
        t0 = time.time()
        try:
            {"disco": lambda: check_disco(args.device), "train": lambda: check_train(args.device),
             "epoch": lambda: check_epoch(args.device, args.threads)}[part]()
        except Exception as err:  # one broken check must not hide the others
            report("FAIL", part, f"{type(err).__name__}: {err}")
        print(f"# {part}: {time.time() - t0:.0f} s", flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())

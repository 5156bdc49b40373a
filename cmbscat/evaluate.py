"""The ``evaluate`` stage: score a trained run on a test file; metrics.json and a ROC plot."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import numpy as np

from cmbscat.datasets import read_labels
from cmbscat.errors import CmbscatError
from cmbscat.metrics import classification_metrics, roc_points
from cmbscat.store import atomic_write_text
from cmbscat.train import model_inputs, resolve_device


def load_run(run_dir: str | Path) -> tuple[dict, Path]:
    """The run's config and the path of its best model; one-line error if unfinished."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise CmbscatError(f"{run_dir} is not a cmbscat run folder (no config.json); "
                           "train one with cmbscat train")
    config = json.loads(cfg_path.read_text())
    model_path = run_dir / ("model.pkl" if config["model"] in ("powspec", "onepoint") else "model.pt")
    if not model_path.exists():
        raise CmbscatError(f"{run_dir} has no trained model yet; finish it with cmbscat train")
    return config, model_path


def predict(run_dir: str | Path, data: str | Path, device: str = "auto", batch_size: int = 32,
            progress: bool = True) -> np.ndarray:
    """Probability of the non-Gaussian class for each map of ``data``, shape (N,)."""
    config, model_path = load_run(run_dir)
    if config["model"] in ("powspec", "onepoint"):
        with open(model_path, "rb") as f:
            saved = pickle.load(f)
        x, _ = model_inputs(config["model"], str(data), progress=progress)
        return saved["classifier"].predict_proba(x)[:, 1]

    import torch

    from cmbscat.nn.models import build_model

    device = resolve_device(device)
    saved = torch.load(model_path, map_location="cpu", weights_only=False)
    x, _ = model_inputs(config["model"], str(data), saved["meta"], progress)
    x = (x - saved["mean"]) / saved["std"]
    model = build_model(saved["kind"], saved["in_channels"], saved["nside"])
    model.load_state_dict(saved["model"])
    model.to(device).eval()
    out = []
    with torch.no_grad():
        for lo in range(0, len(x), batch_size):
            out.append(torch.sigmoid(model(torch.from_numpy(x[lo:lo + batch_size]).to(device))).cpu())
    return torch.cat(out).numpy().astype(np.float64)


def plot_roc(path: Path, labels: np.ndarray, scores: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr = roc_points(labels, scores)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=title)
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(run_dir: str | Path, data: str | Path, out_dir: str | Path | None = None,
             device: str = "auto", progress: bool = True) -> dict:
    """Write ``metrics.json``, ``scores.npy`` and ``roc.png`` for ``run_dir`` on ``data``.

    Output goes to ``out_dir`` (default: the run folder). Returns the metrics.
    """
    t0 = time.time()
    if not Path(data).exists():
        raise CmbscatError(f"no such file: {data}")
    config, _ = load_run(run_dir)
    scores = predict(run_dir, data, device, progress=progress)
    labels = read_labels(data)
    if np.any(labels < 0):
        raise CmbscatError(f"{data} has maps without labels (e.g. a single FITS map); "
                           "evaluation needs labelled test maps")
    metrics = classification_metrics(labels, scores)
    metrics.update({"model": config["model"], "test_file": str(data),
                    "wall_seconds": time.time() - t0})
    out = Path(out_dir) if out_dir else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "scores.npy", scores)
    plot_roc(out / "roc.png", labels, scores,
             f"{config['model']}: AUC {metrics['auc']:.3f}" if metrics["auc"] is not None else config["model"])
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics

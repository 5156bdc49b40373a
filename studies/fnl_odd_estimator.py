"""Would an f_NL network made odd in the map be unbiased? A post-hoc check on a trained run.

    python studies/fnl_odd_estimator.py RUN_DIR TEST_FILE ANCHOR_PREDICTIONS

The map -x of a field -g with f_NL -f is exactly minus the map x of g with f_NL f
(studies/fnl_anchor_bias.py), so (x, f) and (-x, -f) are equally likely. A network's
estimate m(x) can be made odd, m_odd(x) = [m(x) - m(-x)] / 2: its bias is then odd in f_NL
and zero at 0, exactly, whatever the network learned. For the hybrid, -x has the
coefficients of x with its odd channels (S[empty path] and every C[j1, j2]) negated and the
others unchanged (bit for bit, tests/test_odd_channels.py); for the low-resolution CNN,
the map negated.

This evaluates a trained ``--target fnl`` network (RUN_DIR) both ways on TEST_FILE and
prints, per true f_NL, each estimator's bias against the anchor's estimates on the same
maps (ANCHOR_PREDICTIONS: the ``cubic_fisher`` run's predictions.npy on the same test
file), its sigma, and the coverage of the predicted intervals, the odd estimator keeping
the network's calibrated sigma (mean of sigma(x) and sigma(-x); not recalibrated, so
its coverage is conservative where the odd estimate scatters less). Nothing is trained.
"""

from __future__ import annotations

import argparse

import numpy as np

from cmbscat.experiment.datasets import read_fnl
from cmbscat.experiment.evaluate import load_run, network_logits, resolve_device
from cmbscat.experiment.fnl_estimators import SignFlip, TargetScaling, odd_channels
from cmbscat.experiment.train import model_inputs, model_weight


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("test_file")
    parser.add_argument("anchor_predictions")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import torch

    from cmbscat.nn.models import build_model

    config, model_path = load_run(args.run_dir)
    device = resolve_device(args.device)
    saved = torch.load(model_path, map_location="cpu", weights_only=False)
    x, _ = model_inputs(config["model"], args.test_file, saved["meta"], progress=False)
    weight = model_weight(config["model"], args.test_file, {**saved["meta"], "nside": saved["nside"]})
    odd = odd_channels(config["model"], saved["meta"], x.shape[1])
    flip = SignFlip(odd, saved["mean"], saved["std"], saved["target_mean"], saved["target_std"])
    x = ((x - saved["mean"]) / saved["std"]).astype(np.float32)
    model = build_model(saved["kind"], saved["in_channels"], saved["nside"], saved.get("n_outputs", 1))
    model.load_state_dict(saved["model"])
    model.to(device).eval()
    scaling = TargetScaling(saved["target_mean"], saved["target_std"])
    out_plus = network_logits(model, x, device, 32, weight)
    out_minus = network_logits(model, flip.inputs(x), device, 32, weight)
    (m_plus, s_plus), (_, s_minus) = (scaling.to_fnl(out) for out in (out_plus, out_minus))
    s_plus, s_minus = s_plus * saved["calibration"], s_minus * saved["calibration"]
    odd_mean = scaling.to_fnl(flip.odd_output(out_plus, out_minus))[0]
    odd_sigma = (s_plus + s_minus) / 2.0   # the mean of the two sigmas (as reported)
    true = read_fnl(args.test_file)
    anchor = np.load(args.anchor_predictions)[:, 0]
    print(f"{config['model']} run {args.run_dir}: odd channels {int(odd.sum())} of {odd.size}")
    for name, mean, sigma in (("as trained", m_plus, s_plus), ("odd", odd_mean, odd_sigma)):
        pull = np.abs(true - mean) / sigma
        print(f"\n{name}: coverage 68 % {np.mean(pull <= 1) * 100:.1f} %, 95 % {np.mean(pull <= 1.96) * 100:.1f} %")
        print("f_NL | n | bias against the anchor | sigma(f_NL) | abs(bias) / sigma")
        worst = 0.0
        for value in np.unique(true):
            rows = true == value
            diff = mean[rows] - anchor[rows]
            bias, error = diff.mean(), diff.std(ddof=1) / np.sqrt(rows.sum())
            spread = mean[rows].std(ddof=1)
            worst = max(worst, abs(bias) / spread)
            print(f"{value:+6.0f} | {int(rows.sum())} | {bias:+.2f} +- {error:.2f} | {spread:.2f} | "
                  f"{abs(bias) / spread:.2f}")
        print(f"largest abs(bias) / sigma: {worst:.2f}")


if __name__ == "__main__":
    main()

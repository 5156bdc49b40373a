"""The sky: CMB spectra, non-Gaussian models and the ``simulate`` stage.

* :mod:`cmbscat.sky.spectra`: the Planck 2018 C_l table and Gaussian a_lm;
* :mod:`cmbscat.sky.nongaussian`: the non-Gaussian models with matched spectra;
* :mod:`cmbscat.sky.simulate`: the stage that writes sims files.

The submodule names stay free (``cmbscat.sky.simulate`` is the module, not its
function), so only names that clash with none are lifted here.
"""

from cmbscat.sky.simulate import SimulationConfig, simulate_sky

__all__ = ["SimulationConfig", "simulate_sky"]

"""The sky: CMB spectra, non-Gaussian models and the ``simulate`` stage.

* :mod:`cmbscat.sky.spectra`: the Planck 2018 C_l table and Gaussian a_lm;
* :mod:`cmbscat.sky.nongaussian`: the non-Gaussian models with matched spectra;
* :mod:`cmbscat.sky.fnl_distribution`: per-map f_NL distributions (``--fnl-dist``);
* :mod:`cmbscat.sky.observe`: observed skies, beam, noise and mask (``--beam-fwhm``,
  ``--noise``, ``--hits``, ``--mask``, ``--apodize``);
* :mod:`cmbscat.sky.simulate`: the stage that writes sims files.

The submodule names stay free (``cmbscat.sky.simulate`` is the module, not its
function), so only names that clash with none are lifted here.
"""

from cmbscat.sky.fnl_distribution import FnlDistribution
from cmbscat.sky.observe import ObservationConfig
from cmbscat.sky.simulate import SimulationConfig, regenerate_map, simulate_sky

__all__ = ["FnlDistribution", "ObservationConfig", "SimulationConfig", "regenerate_map", "simulate_sky"]

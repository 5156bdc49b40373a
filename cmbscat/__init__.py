"""cmbscat: tell Gaussian from non-Gaussian full-sky CMB maps with spherical scattering networks."""

__version__ = "0.1.0"

"""Classical statistics a cosmologist reads a map with.

* :mod:`cmbscat.stats.powspec`: the binned angular power spectrum;
* :mod:`cmbscat.stats.onepoint`: skewness and excess kurtosis of the map.
"""

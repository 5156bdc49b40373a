"""Classical statistics a cosmologist reads a map with.

* :mod:`cmbscat.stats.powspec`: the binned angular power spectrum;
* :mod:`cmbscat.stats.onepoint`: skewness and excess kurtosis of the map;
* :mod:`cmbscat.stats.cubic`: the locally optimal cubic statistic (the limit for local f_NL);
* :mod:`cmbscat.stats.minkowski`: the three Minkowski functionals (area, boundary, genus);
* :mod:`cmbscat.stats.summary`: all of them for one map, sharing its syntheses;
* :mod:`cmbscat.stats.stage`: the ``stats`` stage, which caches them for every map of a file.
"""

"""Experiments: model inputs from the stage files, training, evaluation, metrics, the pipeline.

* :mod:`cmbscat.experiment.datasets`: model inputs read from sims and scattering files;
* :mod:`cmbscat.experiment.train`, :mod:`cmbscat.experiment.evaluate`: the two stages;
* :mod:`cmbscat.experiment.metrics`: accuracies with intervals, paired comparisons;
* :mod:`cmbscat.experiment.pipeline`: every stage of an experiment from one config.
"""

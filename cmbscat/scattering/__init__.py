"""The designed front-end: spherical wavelets, the scattering transform, the ``scatter`` stage.

* :mod:`cmbscat.scattering.wavelets`: scale-discretised axisymmetric wavelets (filters only);
* :mod:`cmbscat.scattering.transform`: :class:`Scattering`, the multiresolution transform;
* :mod:`cmbscat.scattering.stage`: the stage that writes scattering files.
"""

from cmbscat.scattering.transform import Scattering

__all__ = ["Scattering"]

"""Optimisation-based registration methods that SVF-Net is compared with.

- :mod:`svfnet.baselines.lcc_demons`: LCC Log-Demons (Lorenzi et al. 2013), ``register(moving,
  fixed, spacing=...)`` → stationary velocity field ``(3, I, J, K)`` in voxels, like SVF-Net's.
- :mod:`svfnet.baselines.tuning`: its parameters tuned on a work folder's training pairs
  (``tune_lcc_demons(workdir)``, ``svfnet demons --tune WORKDIR``) and read back
  (``read_tuned_params(workdir)``).

Submodules load on first use (nothing is imported here).
"""

from __future__ import annotations

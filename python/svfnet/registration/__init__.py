"""Registering a pair with a trained SVF-Net: one forward pass, an exponential and a warp.

- :mod:`svfnet.registration.arrays`: ``register(moving, fixed, model)`` on arrays already on the model's
  grid, with optional refinement by LCC Log-Demons (``svfnet.register``).
- :mod:`svfnet.registration.files`: NIfTI images in their own geometry (``register_nifti``,
  ``register_pairs``; ``svfnet register``): results written on the prepared grid and back on the fixed
  image's grid, ITK displacement export.
- :mod:`svfnet.registration.prepare`: a pair put on the model's grid (``prepare_pair``), from labels or
  from the rigid pre-alignment.
- :mod:`svfnet.registration.rigid`: rigid pre-alignment by mutual information (SimpleITK).
- :mod:`svfnet.registration.pairs`: the CSV list of pairs of ``svfnet register --pairs``.

Submodules load on first use.
"""

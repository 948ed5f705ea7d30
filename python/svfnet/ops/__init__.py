"""Field operations and kernels over the compiled core (``svfnet._core``): the math, reached from Python.

- :mod:`svfnet.ops.backend`: the one way to reach ``_core``: array checks, CPU or CUDA dispatch, and the
  "built without CUDA launchers" error.
- :mod:`svfnet.ops.fields`: stationary velocity fields: ``warp``, ``exp`` (scaling and squaring),
  ``log``, ``compose``, ``jacobian_det``, ``lie_bracket``.
- :mod:`svfnet.ops.kernels`: Gaussian kernel sums and their gradients (currents, LDDMM).
- :mod:`svfnet.ops.ebs`: the elastic body spline: fit on landmarks, evaluate on a grid.
- :mod:`svfnet.ops.smoothing`: separable Gaussian smoothing and the local moments LCC needs.
- :mod:`svfnet.ops.differentiable`: torch autograd Functions over the kernels (warp, exp) for the losses.

See docs/architecture.md for how a call reaches its kernel. Submodules load on first use.
"""

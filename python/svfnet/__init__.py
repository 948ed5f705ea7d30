"""svfnet: diffeomorphic registration of 3D cardiac images learned from shapes (SVF-Net).

Nothing heavy happens at import: submodules (``svfnet.ops.fields``, ...) load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# submodules reachable as attributes (svfnet.ops.fields, ...), imported on first use
_SUBMODULES = (
    "baselines",
    "commands",
    "common",
    "data",
    "evaluation",
    "ops",
    "pipeline",
    "references",
    "registration",
    "segmentation",
    "shapes",
    "training",
)

__all__ = [
    "__version__",
    "build_info",
    "cuda_available",
    "default_device",
    "register",
    "segment",
    *_SUBMODULES,
]


def register(moving: Any, fixed: Any, model: Any, *, moving_labels: Any = None) -> Any:
    """Registers ``moving`` to ``fixed`` with a trained SVF-Net (see :func:`svfnet.registration.arrays.register`).

    Arrays on the model's grid; the result has ``.svf``, ``.displacement``, ``.warped`` and
    ``.warped_labels``. For NIfTI images in their own geometry: :mod:`svfnet.registration.files`.
    """
    from svfnet.registration.arrays import register as register_arrays

    return register_arrays(moving, fixed, model, moving_labels=moving_labels)


def segment(image: Any, model: Any, atlases: Any, **options: Any) -> Any:
    """Segments a new image from the labelled subjects of a work folder (multi-atlas with SVF-Net; see
    :func:`svfnet.segmentation.multi_atlas.segment`): ``image`` a NIfTI path or an ``(array, affine)`` pair, ``model``
    a checkpoint, ``atlases`` a work folder. The result has ``.labels``, ``.uncertainty``,
    ``.probabilities`` (on the image's grid) and ``.volumes``; ``out_prefix=`` writes them."""
    from svfnet.segmentation.multi_atlas import segment as segment_image

    return segment_image(image, model, atlases, **options)


def build_info() -> dict[str, Any]:
    """What the compiled extension was built with: version, compiler, OpenMP, CUDA and its architectures,
    and ``min_parallel_work``: the voxel-operations (about a nanosecond of one core each) below which a
    CPU launcher runs on the calling thread (environment variable ``SVFNET_MIN_PARALLEL_WORK``; see
    docs/performance.md)."""
    from svfnet import _core

    return dict(_core.build_info())


def cuda_available() -> bool:
    """True when the CUDA launchers are compiled in and at least one CUDA device is visible."""
    from svfnet import _core

    return bool(_core.build_info()["cuda"]) and _core.cuda_device_count() > 0


def default_device() -> Any:
    """The ``torch.device`` every stage computes on by default (training, registration, evaluation).

    CUDA only where torch sees a device *and* svfnet's CUDA launchers are built and see one too: a
    CPU-only build on a GPU machine would otherwise move tensors to the GPU that its kernels cannot
    take. The one home of this rule.
    """
    import torch

    return torch.device("cuda" if torch.cuda.is_available() and cuda_available() else "cpu")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return import_module(f"svfnet.{name}")
    raise AttributeError(f"module 'svfnet' has no attribute {name!r}")

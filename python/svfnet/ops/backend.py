"""How the public operations reach the compiled kernels.

The extension ``svfnet._core`` never sees torch or CuPy: on the CPU it takes NumPy arrays (a torch
CPU tensor is viewed as one without a copy), on the GPU raw device addresses, a shape and a stream.
This module is the one place that knows the array kinds: it checks what users pass, converts it
to contiguous float32 (or int32 labels) in the *compute form* (NumPy on the CPU, the caller's own
torch tensor or CuPy array on the GPU), allocates outputs, launches, and converts results back.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from svfnet import _core

Array = Any  # numpy.ndarray | torch.Tensor | cupy.ndarray


def _torch():
    """torch, if the caller has imported it (we never import it just to look at an array)."""
    return sys.modules.get("torch")


def _cupy():
    return sys.modules.get("cupy")


def kind_of(x: Array) -> str | None:
    """'numpy', 'torch' or 'cupy'; None for anything else."""
    if isinstance(x, np.ndarray):
        return "numpy"
    torch = _torch()
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    cupy = _cupy()
    if cupy is not None and isinstance(x, cupy.ndarray):
        return "cupy"
    return None


def cpu_threads() -> int:
    """Threads for the OpenMP launchers: torch's count where torch is in use, else OpenMP's default."""
    torch = _torch()
    return torch.get_num_threads() if torch is not None else 0


@dataclass(frozen=True)
class Backend:
    """Where one call computes: the kind of arrays it was given and their device."""

    kind: str  # "numpy", "torch" or "cupy"
    device: Any = None  # torch.device for torch tensors, device id for CuPy, None for NumPy

    @property
    def on_cuda(self) -> bool:
        return self.kind == "cupy" or (self.kind == "torch" and self.device.type == "cuda")

    # ---------------------------------------------------------------- conversion
    def to_compute(self, func: str, name: str, x: Array, dtype: str) -> Array:
        """``x`` as a contiguous ``dtype`` ("float32" or "int32") array of the compute form."""
        if self.kind == "numpy":
            return np.ascontiguousarray(x, dtype=dtype)
        if self.kind == "torch":
            torch = _torch()
            if x.requires_grad:
                raise ValueError(
                    f"{func}(): '{name}' requires grad, but svfnet.ops.fields operations are not "
                    "differentiable; call them under torch.no_grad() or pass a detached tensor"
                )
            t = x.to(dtype=getattr(torch, dtype)).contiguous()
            return t.numpy() if not self.on_cuda else t
        return _cupy().ascontiguousarray(x, dtype=dtype)

    def from_compute(self, a: Array) -> Array:
        """A result of the compute form as the caller's kind (a view, no copy)."""
        if self.kind == "torch" and not self.on_cuda:
            return _torch().from_numpy(a)
        return a

    def empty(self, shape: tuple[int, ...], dtype: str) -> Array:
        if not self.on_cuda:
            return np.empty(shape, dtype=dtype)
        if self.kind == "torch":
            torch = _torch()
            return torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
        cupy = _cupy()
        with cupy.cuda.Device(self.device):
            return cupy.empty(shape, dtype=dtype)

    # ---------------------------------------------------------------- launching
    def _stream(self) -> int:
        if self.kind == "torch":
            return _torch().cuda.current_stream(self.device).cuda_stream
        return _cupy().cuda.get_current_stream().ptr

    def _device_scope(self):
        if self.kind == "torch":
            return _torch().cuda.device(self.device)
        return _cupy().cuda.Device(self.device)

    def launch(self, op: str, arrays: list[Array], *scalars: Any) -> Any:
        """Runs ``_core.<op>_cpu`` or ``_core.<op>_cuda`` on compute-form arrays.

        Every array is (N, C, I, J, K); the CUDA entry points receive the addresses, the shape of
        the first array and the current stream of the arrays' device.
        """
        if not self.on_cuda:
            return getattr(_core, f"{op}_cpu")(*arrays, *scalars, cpu_threads())
        entry = cuda_entry(f"{op}_cuda")
        with self._device_scope():
            return entry(*[address(a) for a in arrays], tuple(arrays[0].shape), *scalars, self._stream())

    def count_nonfinite(self, a: Array) -> int:
        if not self.on_cuda:
            return _core.count_nonfinite_cpu(a.reshape(-1), cpu_threads())
        with self._device_scope():
            return cuda_entry("count_nonfinite_cuda")(address(a), math.prod(a.shape), self._stream())

    def norm_stats(self, field5: Array) -> tuple[float, float]:
        """(max, mean) of |field(x)| over all voxels of a (N, 3, I, J, K) field."""
        return self.launch("norm_stats", [field5])

    def copy(self, a: Array) -> Array:
        return a.clone() if self.kind == "torch" and self.on_cuda else a.copy()


def cuda_entry(name: str, what: str = "arrays") -> Any:
    """The CUDA launcher ``_core.<name>``, or the one error that says the build has none (every CUDA
    call of :mod:`svfnet.ops` comes here: fields through :meth:`Backend.launch`, kernels, ebs)."""
    entry = getattr(_core, name, None)
    if entry is None:
        raise RuntimeError(
            "svfnet was built without its CUDA launchers (build_info()['cuda'] is False); "
            f"reinstall with nvcc available, or move the {what} to the CPU"
        )
    return entry


def address(a: Array) -> int:
    """Device address of a contiguous torch tensor or CuPy array."""
    return a.data_ptr() if kind_of(a) == "torch" else a.data.ptr


def backend_of(func: str, **arrays: Array) -> Backend:
    """The one backend of all ``arrays``; TypeError naming the argument when kinds or devices differ."""
    found: Backend | None = None
    first = ""
    for name, x in arrays.items():
        kind = kind_of(x)
        if kind is None:
            raise TypeError(
                f"{func}(): '{name}' must be a numpy.ndarray, torch.Tensor or cupy.ndarray, got {type(x).__name__}"
            )
        if kind == "torch":
            backend = Backend("torch", x.device)
        elif kind == "cupy":
            backend = Backend("cupy", x.device.id)
        else:
            backend = Backend("numpy")
        if found is None:
            found, first = backend, name
        elif backend != found:
            raise TypeError(
                f"{func}(): '{name}' ({_describe(backend)}) and '{first}' ({_describe(found)}) must be "
                "the same kind of array on the same device"
            )
    assert found is not None
    return found


def _describe(backend: Backend) -> str:
    return backend.kind if backend.device is None else f"{backend.kind} on {backend.device}"


# -------------------------------------------------------------------- checks
def dtype_family(x: Array) -> str:
    """'float', 'int' (signed or unsigned), 'bool' or 'other' for any supported array kind."""
    kind = kind_of(x)
    if kind == "torch":
        torch = _torch()
        if x.dtype.is_floating_point:
            return "float"
        if x.dtype == torch.bool:
            return "bool"
        if x.dtype.is_complex:
            return "other"
        return "int"
    dtype = np.dtype(x.dtype)
    if dtype.kind == "f":
        return "float"
    if dtype.kind in "iu":
        return "int"
    if dtype.kind == "b":
        return "bool"
    return "other"


def require_dtype(func: str, name: str, x: Array, allowed: tuple[str, ...]) -> None:
    family = dtype_family(x)
    if family not in allowed:
        raise TypeError(f"{func}(): '{name}' must have a {' or '.join(allowed)} dtype, got {x.dtype}")


def require_finite(func: str, name: str, backend: Backend, a: Array) -> None:
    bad = backend.count_nonfinite(a)
    if bad:
        raise ValueError(f"{func}(): '{name}' has {bad} non-finite values (NaN or infinity)")


def labels_int32(func: str, backend: Backend, labels: Array) -> Array:
    """``labels`` as int32 of the compute form; ValueError naming ``func`` when a value does not fit."""
    lo, hi = int(labels.min()), int(labels.max())
    if lo < -(2**31) or hi >= 2**31:
        raise ValueError(f"{func}(): 'labels' values must fit in int32, got range [{lo}, {hi}]")
    return backend.to_compute(func, "labels", labels, "int32")


def shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"

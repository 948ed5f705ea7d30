"""SVF-Net: a U-Net that predicts the stationary velocity field registering two images.

Input: moving and fixed stacked, ``(N, 2, I, J, K)``; output: the SVF ``(N, 3, I, J, K)`` in voxels
of the input grid (pull-back convention: ``warp(moving, exp(svf)) ≈ fixed``). The first two levels
are in-plane (3×3×1 kernels, 2×2×1 pooling): short-axis slices are 6–10 mm apart against
1.5–2.5 mm in plane, so after two levels the grid is near isotropic; levels three and four are
3D (3×3×3 kernels; 2×2×2 pooling into level four). The expanding path mirrors it with skip
connections, and a last in-plane convolution gives the three SVF components.

A grid works when its in-plane sizes are divisible by 8 and its slice count by 2.

References:
    Rohé, Datar, Heimann, Sermesant, Pennec, "SVF-Net: Learning Deformable Image Registration
    Using Shape Matching", MICCAI 2017.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from svfnet import default_device  # CUDA only where svfnet's launchers are built too
from svfnet.common.atomic import atomic_path
from svfnet.common.limits import check_grid  # torch-free: the command line checks grids without torch

__all__ = ["SVFNet", "SVFNetConfig", "check_grid", "load", "save_checkpoint"]


@dataclass(frozen=True)
class SVFNetConfig:
    """Architecture of an SVF-Net (saved beside the weights in every checkpoint).

    Attributes:
        widths: channels of levels 1–4 (levels 1–2 in-plane, 3–4 3D).
        convs_per_level: convolutions per level on each path.
        norm: "instance", "batch", "group" (8 groups) or "none".
        activation: "leaky_relu", "relu" or "elu".
        grid: the grid the model is trained on, ``(I, J, K)`` (other valid grids work too).
        spacing_mm: the voxel size of that grid (for registration of images in other geometries).
        long_axis: how the training subjects' long axis was found when they were prepared
            (``svfnet prepare --long-axis``: "slices" or "labels"); registration prepares new
            images the same way.
    """

    widths: tuple[int, int, int, int] = (16, 32, 64, 64)
    convs_per_level: int = 2
    norm: str = "instance"
    activation: str = "leaky_relu"
    grid: tuple[int, int, int] = (64, 64, 16)
    spacing_mm: tuple[float, float, float] = (1.8, 1.8, 8.0)
    long_axis: str = "slices"

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "grid", tuple(int(s) for s in self.grid))
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ValueError(
                f"SVFNetConfig: 'widths' must be four positive channel counts, got {self.widths}"
            )
        if self.convs_per_level < 1:
            raise ValueError(f"SVFNetConfig: 'convs_per_level' must be >= 1, got {self.convs_per_level}")
        if self.norm not in ("instance", "batch", "group", "none"):
            raise ValueError(
                f"SVFNetConfig: 'norm' must be instance, batch, group or none, got {self.norm!r}"
            )
        if self.activation not in ("leaky_relu", "relu", "elu"):
            raise ValueError(
                f"SVFNetConfig: 'activation' must be leaky_relu, relu or elu, got {self.activation!r}"
            )
        check_grid(self.grid, "SVFNetConfig")
        if self.long_axis not in ("slices", "labels"):
            raise ValueError(f"SVFNetConfig: 'long_axis' must be slices or labels, got {self.long_axis!r}")

    def to_dict(self) -> dict:
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict) -> SVFNetConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"SVFNetConfig: unknown keys {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class _Float32Norm:
    """A normalisation that computes in float32 under autocast (the parameter names stay those of
    the torch layer, so checkpoints are unchanged). Its statistics over a few voxels (the coarsest
    level holds 8 × 8 × 2 of them on the default grid) lose too much in bfloat16: training in
    bfloat16 with the norms in bfloat16 met non-finite gradients (tests/test_train.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


class _InstanceNorm(_Float32Norm, nn.InstanceNorm3d):
    pass


class _BatchNorm(_Float32Norm, nn.BatchNorm3d):
    pass


class _GroupNorm(_Float32Norm, nn.GroupNorm):
    pass


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return _InstanceNorm(channels, affine=True)
    if kind == "batch":
        return _BatchNorm(channels)
    if kind == "group":
        return _GroupNorm(math.gcd(8, channels), channels)
    return nn.Identity()


def _activation(kind: str) -> nn.Module:
    return {"leaky_relu": nn.LeakyReLU(0.2), "relu": nn.ReLU(), "elu": nn.ELU()}[kind]


def _block(in_channels: int, out_channels: int, in_plane: bool, config: SVFNetConfig) -> nn.Sequential:
    kernel, padding = ((3, 3, 1), (1, 1, 0)) if in_plane else ((3, 3, 3), (1, 1, 1))
    layers: list[nn.Module] = []
    for index in range(config.convs_per_level):
        layers += [
            nn.Conv3d(in_channels if index == 0 else out_channels, out_channels, kernel, padding=padding),
            _norm(config.norm, out_channels),
            _activation(config.activation),
        ]
    return nn.Sequential(*layers)


# Down-sampling from level l to l + 1: in plane twice, then in all three axes.
_POOL = ((2, 2, 1), (2, 2, 1), (2, 2, 2))
_IN_PLANE = (True, True, False, False)


class SVFNet(nn.Module):
    """The U-Net of :class:`SVFNetConfig`; ``forward(pair)`` maps ``(N, 2, I, J, K)`` to the SVF ``(N, 3, I, J, K)``."""

    def __init__(self, config: SVFNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or SVFNetConfig()
        w = self.config.widths
        self.encoders = nn.ModuleList(
            [
                _block(2 if level == 0 else w[level - 1], w[level], _IN_PLANE[level], self.config)
                for level in range(4)
            ]
        )
        self.decoders = nn.ModuleList(
            [_block(w[level + 1] + w[level], w[level], _IN_PLANE[level], self.config) for level in range(3)]
        )
        self.head = nn.Conv3d(w[0], 3, (3, 3, 1), padding=(1, 1, 0))
        # start from the identity: a zero SVF before any training
        nn.init.normal_(self.head.weight, std=1e-5)
        nn.init.zeros_(self.head.bias)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        if pair.ndim != 5 or pair.shape[1] != 2:
            raise ValueError(
                f"SVFNet: input must be (N, 2, I, J, K) (moving, fixed), got {tuple(pair.shape)}"
            )
        check_grid(pair.shape[2:])
        skips = []
        x = pair
        for level, encoder in enumerate(self.encoders):
            x = _run_level(encoder, x, level)
            if level < 3:
                skips.append(x)
                x = F.max_pool3d(x, _POOL[level])
        for level in (2, 1, 0):
            x = F.interpolate(x, scale_factor=_POOL[level], mode="nearest")
            x = _run_level(self.decoders[level], torch.cat([x, skips[level]], dim=1), level)
        return self.head(x)


def _run_level(block: nn.Module, x: torch.Tensor, level: int) -> torch.Tensor:
    """One level's block; under autocast the 3D levels compute in float32.

    Why: on the CPU (torch 2.13, oneDNN) the bfloat16 weight gradients of the 3D convolutions on a
    small grid (2 x 2 x 2 voxels at level four of a 16 x 16 x 4 input) came out non-finite at random,
    in 5 of 300 steps, finite again when the same step was recomputed; the in-plane levels never
    did. The 3D levels hold few voxels, so float32 there costs little of what bfloat16 saves.
    """
    if _IN_PLANE[level] or not torch.is_autocast_enabled(x.device.type):
        return block(x)
    with torch.autocast(x.device.type, enabled=False):
        return block(x.float())


def save_checkpoint(path: str | Path, model: SVFNet, **extra) -> None:
    """Writes the model's configuration and weights (plus ``extra`` entries) atomically."""
    module = model.module if hasattr(model, "module") else model
    payload = {
        "format": "svfnet-checkpoint-1",
        "config": module.config.to_dict(),
        "model": module.state_dict(),
        **extra,
    }
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Loads a checkpoint safely (``weights_only=True``) and checks its format; ValueError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # pickle, zip or unsupported-type errors all mean "not our checkpoint"
        raise ValueError(
            f"{path} is not a readable svfnet checkpoint ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != "svfnet-checkpoint-1":
        raise ValueError(f"{path} is not an svfnet checkpoint (no 'format': 'svfnet-checkpoint-1' entry)")
    for key in ("config", "model"):
        if key not in payload:
            raise ValueError(f"{path} is an incomplete svfnet checkpoint: '{key}' is missing")
    return payload


def load(path: str | Path, map_location: str | torch.device = "cpu") -> SVFNet:
    """The SVF-Net stored in a checkpoint, in eval mode; clear ValueError for a wrong or corrupted file."""
    payload = read_checkpoint(path, map_location)
    try:
        config = SVFNetConfig.from_dict(dict(payload["config"]))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: invalid model configuration: {error}") from None
    model = SVFNet(config)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not match the configuration: {error}") from None
    for name, tensor in model.state_dict().items():  # a NaN weight would only show as a NaN field, far away
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"{path}: the checkpoint's '{name}' has {bad} non-finite values (of {tensor.numel()}): the model is "
                "broken; use an earlier checkpoint or train again"
            )
    return model.to(map_location).eval()


def as_model(
    model: SVFNet | str | os.PathLike, device: str | torch.device | None = None, *, func: str = "register"
) -> SVFNet:
    """A model in eval mode from an :class:`SVFNet` or a checkpoint path (loaded onto ``device``, by default
    :func:`svfnet.default_device`); the one place every registration takes its ``model`` argument from.

    Raises:
        TypeError: ``model`` is neither, named with ``func``.
        FileNotFoundError, ValueError: the checkpoint is missing or not a valid svfnet checkpoint.
    """
    if isinstance(model, SVFNet):
        return model.eval()
    if isinstance(model, (str, os.PathLike)):
        return load(model, device or default_device())
    raise TypeError(f"{func}(): 'model' must be an SVFNet or a checkpoint path, got {type(model).__name__}")

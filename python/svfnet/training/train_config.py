"""The training's configuration: :class:`TrainConfig` (saved with every run, checked on creation), the
recipes and precisions it may name, and how a precision resolves on a device."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from svfnet.training.model import SVFNetConfig

__all__ = ["TrainConfig"]

# The training losses (TrainConfig.recipe; svfnet.training.losses): the paper's, and the paper's with a label-overlap term.
RECIPES = ("paper", "overlap")
PRECISIONS = ("float32", "bfloat16", "auto")
# What a run saved before the recipes existed trained with (its config has none of these keys): the
# paper's loss, no rotation or intensity augmentation, float32 — not today's defaults.
_BEFORE_RECIPES = {
    "recipe": "paper",
    "intensity_augmentation": False,
    "rotation_deg": 0.0,
    "precision": "float32",
}


@dataclass(frozen=True)
class TrainConfig:
    """Training parameters (all saved with the run).

    Attributes:
        steps: optimiser steps.
        batch_size: pairs per step (per process under torchrun).
        learning_rate: Adam's learning rate.
        targets: "references" or "random" (see the module docstring).
        random_amplitude_vox: root-mean-square in-plane component of a random target SVF, in voxels.
        random_smoothness_vox: Gaussian width of random target SVFs, in voxels (in plane; the
            slice axis uses it divided by the slice/in-plane spacing ratio).
        shift_vox: largest in-plane translation of the augmentation, in voxels (0: none).
        loss_mask: "heart" (voxels within 3 voxels in plane and 1 slice of the fixed labels) or
            "none" (whole grid). Far from the heart a reference is the spline's extrapolation,
            large at the corners and not to be read from the images; fitting it there costs the
            network accuracy on the heart (docs/pipeline.md has the measurement).
        recipe: the loss. "paper": the squared difference to the reference SVF (the paper's);
            "overlap" (the default, measured better: README.md): that plus ``overlap_weight`` times
            the soft Dice loss of the moving labels warped by exp(prediction) against the fixed
            labels (:mod:`svfnet.training.losses`).
        overlap_weight: weight of the label-overlap term in the "overlap" recipe (the SVF term
            is in voxel², the overlap term in [0, 1]).
        intensity_augmentation: draw a bias field, a gamma, a contrast change and noise for
            each image of a pair, independently (:func:`svfnet.training.augment.augment_intensity`);
            the target is unchanged.
        rotation_deg: largest in-plane rotation of a pair and its target, degrees (0: none;
            :func:`svfnet.training.augment.rotate_in_plane`).
        inverse_consistency_weight: 0 (the default: off) or the weight of an inverse-consistency
            term (:mod:`svfnet.training.consistency`): each step draws ``batch_size / 2`` pairs and their
            reverses (``batch_size`` inputs, as many as without it; the reverse's target is its own
            reference), augmented alike, and adds this weight times the mean squared residual of
            ``exp(v_ij) ∘ exp(v_ji)`` and ``exp(v_ji) ∘ exp(v_ij)`` against the identity (voxel²,
            where the loss mask counts). Needs an even ``batch_size``.
        precision: the arithmetic of the network's forward and backward passes: "float32", or
            "bfloat16" (torch autocast: convolutions in bfloat16, norms, losses and the weights
            in float32), or "auto": bfloat16 where the device computes it natively (a CPU with
            AVX-512 BF16 or AMX, a GPU of compute capability 8.0 or more), float32 elsewhere.
            Registration always runs in float32.
        validate_every: steps between validations (loss and Dice on the validation pairs).
        validation_pairs: at most this many validation pairs.
        checkpoint_every: steps between checkpoints.
        seed: seeds the model's initialisation, the sampling and the augmentation.
        model: the architecture.
    """

    steps: int = 2000
    batch_size: int = 4
    learning_rate: float = 1e-3
    targets: str = "references"
    random_amplitude_vox: float = 1.5
    random_smoothness_vox: float = 6.0
    shift_vox: int = 3
    loss_mask: str = "heart"
    recipe: str = "overlap"
    overlap_weight: float = 3.0
    intensity_augmentation: bool = False
    rotation_deg: float = 0.0
    inverse_consistency_weight: float = 0.0
    precision: str = "float32"
    validate_every: int = 100
    validation_pairs: int = 16
    checkpoint_every: int = 50
    seed: int = 0
    model: SVFNetConfig = field(default_factory=SVFNetConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "validate_every", "validation_pairs", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig: '{name}' must be a positive integer, got {value!r}")
        # NaN passes no comparison and inf passes "> 0": both would reach Adam and poison the
        # weights at the first step, so every real-valued parameter must be finite
        for name in ("learning_rate", "random_amplitude_vox", "random_smoothness_vox"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"TrainConfig: '{name}' must be a finite number > 0, got {value!r}")
        for name in ("shift_vox", "seed"):  # the seed seeds NumPy, which takes no negative seed
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TrainConfig: '{name}' must be an integer >= 0, got {value!r}")
        if self.targets not in ("references", "random"):
            raise ValueError(f"TrainConfig: 'targets' must be 'references' or 'random', got {self.targets!r}")
        if self.loss_mask not in ("none", "heart"):
            raise ValueError(f"TrainConfig: 'loss_mask' must be 'none' or 'heart', got {self.loss_mask!r}")
        if self.recipe not in RECIPES:
            raise ValueError(
                f"TrainConfig: 'recipe' must be one of {', '.join(map(repr, RECIPES))}, got {self.recipe!r}"
            )
        for name, high in (
            ("overlap_weight", 1000.0),
            ("rotation_deg", 180.0),
            ("inverse_consistency_weight", 1000.0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
                raise ValueError(f"TrainConfig: '{name}' must be a number from 0 to {high:g}, got {value!r}")
        if self.inverse_consistency_weight and self.batch_size % 2:
            raise ValueError(
                "TrainConfig: 'inverse_consistency_weight' > 0 draws pairs with their reverses: 'batch_size' must be "
                f"even, got {self.batch_size}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"TrainConfig: 'precision' must be one of {', '.join(map(repr, PRECISIONS))}, got {self.precision!r}"
            )
        if not isinstance(self.intensity_augmentation, bool):
            raise ValueError(
                f"TrainConfig: 'intensity_augmentation' must be true or false, got {self.intensity_augmentation!r}"
            )

    def summary(self) -> str:
        """What trained a model, in one line (the evaluation report states it)."""
        loss = "the paper's (squared difference to the reference SVF)"
        if self.recipe == "overlap":
            loss = f"overlap (the paper's plus {self.overlap_weight:g} x soft Dice of the warped labels)"
        augmentations = [f"shifts up to {self.shift_vox} voxels"] if self.shift_vox else []
        if self.rotation_deg:
            augmentations.append(f"rotations up to {self.rotation_deg:g} degrees")
        if self.intensity_augmentation:
            augmentations.append("bias field, gamma, contrast and noise")
        if self.inverse_consistency_weight:
            loss += f", plus {self.inverse_consistency_weight:g} x inverse consistency of each pair and its reverse"
        return (
            f"recipe {loss}; {self.steps:,} steps of {self.batch_size} pairs, learning rate {self.learning_rate:g}, "
            f"loss counted {'near the heart' if self.loss_mask == 'heart' else 'on the whole grid'}; augmentation: "
            f"{', '.join(augmentations) or 'none'}; precision {self.precision}; widths "
            f"{'-'.join(map(str, self.model.widths))}"
        )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["model"] = self.model.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        # a run saved before a key existed trained as that key's value in _BEFORE_RECIPES says
        data = {**_BEFORE_RECIPES, **data}
        data["model"] = SVFNetConfig.from_dict(data.get("model", {}))
        return cls(**data)


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively (else autocast emulates them, slower)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    cpu = torch.cpu
    return any(
        getattr(cpu, name, lambda: False)()
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )


def resolved_precision(precision: str, device: torch.device) -> str:
    """``TrainConfig.precision`` on ``device``: "float32" or "bfloat16" ("auto" decided by :func:`native_bfloat16`)."""
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision

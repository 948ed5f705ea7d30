"""The peers a user would otherwise call, written the way VoxelMorph and MONAI write them.

VoxelMorph's ``SpatialTransformer`` adds the displacement to an identity grid, normalises it to
[-1, 1] and calls ``grid_sample``; its ``VecInt`` scales the velocity by 2^-steps and composes it
with itself ``steps`` times through that transformer. MONAI's ``Warp``/``DVF2DDF`` do the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class SpatialTransformer(torch.nn.Module):
    """VoxelMorph-style warp: out(x) = image(x + disp(x)), trilinear, zeros outside."""

    def __init__(self, grid: tuple[int, int, int], padding_mode: str = "zeros") -> None:
        super().__init__()
        vectors = [torch.arange(0, s, dtype=torch.float32) for s in grid]
        self.register_buffer("identity", torch.stack(torch.meshgrid(vectors, indexing="ij"))[None])
        # a buffer, so that .to(device) moves it with the identity grid
        scale = torch.tensor([2.0 / (s - 1) for s in grid]).view(1, 3, 1, 1, 1)
        self.register_buffer("scale", scale, persistent=False)
        self.padding_mode = padding_mode

    def forward(self, image: torch.Tensor, disp: torch.Tensor) -> torch.Tensor:
        locations = (self.identity + disp) * self.scale - 1.0
        # grid_sample wants (x, y, z) = (k, j, i) in the last dimension
        locations = locations.permute(0, 2, 3, 4, 1).flip(-1)
        return F.grid_sample(
            image, locations, mode="bilinear", padding_mode=self.padding_mode, align_corners=True
        )


class VecInt(torch.nn.Module):
    """VoxelMorph-style scaling and squaring of a velocity field (N, 3, I, J, K)."""

    def __init__(self, grid: tuple[int, int, int], steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.transformer = SpatialTransformer(grid, padding_mode="border")

    def forward(self, velocity: torch.Tensor) -> torch.Tensor:
        disp = velocity * (1.0 / 2**self.steps)
        for _ in range(self.steps):
            disp = disp + self.transformer(disp, disp)
        return disp

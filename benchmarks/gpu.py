"""svfnet's kernels against torch on one device, side by side: the GPU benchmark of ``make gpu-check``.

Each case runs svfnet and the torch code a user would otherwise write (VoxelMorph's
``SpatialTransformer``/``VecInt``, a dense kernel matrix, autograd) on the same device and the same
data, checks that they agree, and records both medians and their ratio. On a CUDA device it also
runs svfnet's CPU launchers on the same inputs and records the largest difference between the two
launchers: what a GPU changes in the numbers.

Run: ``python benchmarks/gpu.py --device cuda --out build/gpu-check`` (``make gpu-check`` does it
after building the CUDA launchers); ``--device cpu --quick`` checks the script itself on a machine
without a GPU (small sizes, few rounds). Writes ``gpu_benchmark.json`` and ``gpu_benchmark.md``.
Timings: ``torch.cuda.synchronize()`` around each call, warm-up calls first, medians of ``--rounds``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import svfnet
from benchmarks.peers import SpatialTransformer, VecInt
from svfnet.ops import differentiable, fields, kernels
from svfnet.ops.ebs import fit_ebs
from svfnet.training.losses import label_overlap_loss, masked_mse, soft_dice
from svfnet.training.model import SVFNet, SVFNetConfig

SIGMA = 0.5  # kernel width of the Gaussian sums (the points are unit normal)


def smooth_field(grid, amplitude: float, seed: int, batch: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (3, *grid) if batch is None else (batch, 3, *grid)
    sigma = [0] * (len(shape) - 3) + [4, 4, 2]
    field = gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="nearest")
    return (amplitude * field / np.abs(field).max()).astype(np.float32)


class Bench:
    """Times callables on one device and collects the rows of the table."""

    def __init__(self, device: torch.device, rounds: int, warmup: int) -> None:
        self.device, self.rounds, self.warmup = device, rounds, warmup
        self.rows: list[dict[str, Any]] = []

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def median_s(self, func: Callable[[], Any]) -> tuple[float, Any]:
        for _ in range(self.warmup):
            out = func()
        self.sync()
        times = []
        for _ in range(self.rounds):
            started = time.perf_counter()
            out = func()
            self.sync()
            times.append(time.perf_counter() - started)
        return statistics.median(times), out

    def compare(
        self,
        case: str,
        ours: Callable[[], Any],
        peer_name: str,
        peer: Callable[[], Any] | None,
        check: Callable[[Any, Any], float] | None = None,
    ) -> dict[str, Any]:
        """Times ``ours`` and ``peer``; ``check(ours_out, peer_out)`` returns their largest difference."""
        ours_s, ours_out = self.median_s(ours)
        row: dict[str, Any] = {"case": case, "svfnet_ms": 1e3 * ours_s, "peer": peer_name}
        if peer is not None:
            peer_s, peer_out = self.median_s(peer)
            row.update(peer_ms=1e3 * peer_s, ratio=peer_s / ours_s)
            if check is not None:
                row["max_difference_vs_peer"] = float(check(ours_out, peer_out))
        self.rows.append(row)
        print(_row_text(row), flush=True)
        return row


def _row_text(row: dict[str, Any]) -> str:
    peer = (
        f"{row['peer']} {row['peer_ms']:.3f} ms, ratio {row['ratio']:.1f}x"
        if "peer_ms" in row
        else row["peer"]
    )
    diff = f", max |diff| {row['max_difference_vs_peer']:.2e}" if "max_difference_vs_peer" in row else ""
    return f"{row['case']}: svfnet {row['svfnet_ms']:.3f} ms; {peer}{diff}"


def _max_abs(a: Any, b: Any) -> float:
    return float((torch.as_tensor(a).double().cpu() - torch.as_tensor(b).double().cpu()).abs().max())


def _launcher_difference(on_device: Any, on_cpu: Any) -> float:
    """Largest |CUDA − CPU| of one svfnet operation on the same inputs (0 on a CPU run)."""
    return _max_abs(on_device, on_cpu)


def bench_fields(bench: Bench, grids: dict[str, tuple[int, int, int]], parity: dict[str, float]) -> None:
    for name, grid in grids.items():
        _bench_fields_on(bench, name, grid, parity)


def _bench_fields_on(bench: Bench, name: str, grid: tuple[int, int, int], parity: dict[str, float]) -> None:
    device = bench.device
    image = torch.from_numpy(np.random.default_rng(1).random(grid, dtype=np.float32)).to(device)
    disp = torch.from_numpy(smooth_field(grid, 4.0, seed=0)).to(device)
    transformer = SpatialTransformer(grid).to(device)

    def peer_warp() -> torch.Tensor:
        with torch.no_grad():
            return transformer(image[None, None], disp[None])[0, 0]

    row = bench.compare(
        f"warp 1 channel {name}",
        lambda: fields.warp(image, disp),
        "torch grid_sample (VoxelMorph)",
        peer_warp,
        _max_abs,
    )
    if device.type == "cuda":
        parity[row["case"]] = _launcher_difference(
            fields.warp(image, disp), fields.warp(image.cpu().numpy(), disp.cpu().numpy())
        )

    steps = 7
    integrate = VecInt(grid, steps).to(device)

    def peer_exp() -> torch.Tensor:
        with torch.no_grad():
            return integrate(disp[None])[0]

    row = bench.compare(
        f"exp {steps} squarings {name}",
        lambda: fields.exp(disp, steps=steps),
        "torch VecInt (VoxelMorph)",
        peer_exp,
        _max_abs,
    )
    if device.type == "cuda":
        parity[row["case"]] = _launcher_difference(
            fields.exp(disp, steps=steps), fields.exp(disp.cpu().numpy(), steps=steps)
        )

    # exp and its gradient: svfnet's levels + adjoint kernels against autograd through VecInt
    velocity = disp[None].contiguous()
    grad_out = torch.from_numpy(smooth_field(grid, 1.0, seed=2)).to(device)[None]
    used = fields.exp_steps(float(velocity.abs().max()))
    integrate_used = VecInt(grid, used).to(device)

    def ours_grad() -> torch.Tensor:
        v = velocity.clone().requires_grad_(True)
        (differentiable.exp(v) * grad_out).sum().backward()
        return v.grad

    def peer_grad() -> torch.Tensor:
        v = velocity.clone().requires_grad_(True)
        (integrate_used(v) * grad_out).sum().backward()
        return v.grad

    # the trilinear derivative jumps at cell edges: compare the bulk, not the odd voxel
    def bulk_difference(a: torch.Tensor, b: torch.Tensor) -> float:
        error = (a.double() - b.double()).abs().flatten().cpu()
        return float(torch.quantile(error, 0.999)) if error.numel() <= 16_000_000 else float(error.median())

    row = bench.compare(
        f"exp + gradient ({used} squarings) {name}",
        ours_grad,
        "torch VecInt + autograd",
        peer_grad,
        bulk_difference,
    )


def bench_overlap_loss(bench: Bench, grid: tuple[int, int, int], batch: int) -> None:
    """The overlap recipe's loss, forward and backward: svfnet's exp/warp against VecInt/grid_sample."""
    device = bench.device
    velocity = torch.from_numpy(smooth_field(grid, 3.0, seed=3, batch=batch)).to(device)
    rng = np.random.default_rng(4)
    smooth = gaussian_filter(rng.standard_normal((2, batch, *grid)), [0, 0, 3, 3, 1.5])
    # five labels (background and four regions) in smooth blobs, moving and fixed drawn apart
    labels = np.stack([np.digitize(s, np.quantile(s, [0.4, 0.55, 0.7, 0.85])) for s in smooth]).astype(
        np.uint8
    )
    regions = [
        torch.from_numpy((lab[:, None] == np.arange(1, 5).reshape(1, -1, 1, 1, 1)).astype(np.float32)).to(
            device
        )
        for lab in labels
    ]
    used = fields.exp_steps(float(velocity.abs().max()))
    integrate = VecInt(grid, used).to(device)
    transformer = SpatialTransformer(grid).to(device)

    def ours() -> float:
        v = velocity.clone().requires_grad_(True)
        loss = label_overlap_loss(v, regions[0], regions[1])
        loss.backward()
        return float(loss.detach())

    def peer() -> float:
        v = velocity.clone().requires_grad_(True)
        warped = transformer(regions[0], integrate(v))
        loss = 1.0 - torch.nanmean(soft_dice(warped, regions[1]))
        loss.backward()
        return float(loss.detach())

    bench.compare(
        f"overlap loss forward + backward, batch {batch} {'x'.join(map(str, grid))}",
        ours,
        "torch VecInt + grid_sample + autograd",
        peer,
        lambda a, b: abs(a - b),
    )


def bench_kernel_sums(bench: Bench, count: int, parity: dict[str, float]) -> None:
    device = bench.device
    rng = np.random.default_rng(0)
    x, y, b = (
        torch.from_numpy(rng.standard_normal((count, 3)).astype(np.float32)).to(device) for _ in range(3)
    )

    def dense() -> torch.Tensor:
        out = torch.empty_like(x)
        step = max(1, 2**28 // (4 * count))  # rows per block: at most 1 GiB of kernel matrix
        for start in range(0, count, step):
            block = x[start : start + step]
            out[start : start + step] = torch.exp(-(torch.cdist(block, y) ** 2) / SIGMA**2) @ b
        return out

    row = bench.compare(
        f"Gaussian kernel sum N = M = {count:,}",
        lambda: kernels.gaussian_sum(x, y, b, SIGMA),
        "torch dense kernel matrix (cdist)",
        dense,
        lambda a, c: _max_abs(a, c) / float(c.abs().max()),
    )
    if device.type == "cuda":
        parity[row["case"] + " (relative)"] = _max_abs(
            kernels.gaussian_sum(x, y, b, SIGMA),
            kernels.gaussian_sum(x.cpu().numpy(), y.cpu().numpy(), b.cpu().numpy(), SIGMA),
        ) / float(b.abs().max() * count)


def _torch_ebs_on_grid(spline: Any, shape, spacing, device: torch.device) -> torch.Tensor:
    """The fitted spline on every voxel, written in torch as one would without svfnet (float64, blocks
    of voxels): u(x) = Σ_k G(x − p_k) c_k + Aᵀx + t in the normalised frame, where
    G(r) c = α |r|³ c − 3 |r| (r·c) r."""
    landmarks = torch.from_numpy(spline.landmarks).to(device)
    coefficients = torch.from_numpy(spline.coefficients[0]).to(device)
    affine = torch.from_numpy(spline.affine[0]).to(device)
    spacing_t = torch.tensor(spacing, dtype=torch.float64, device=device)
    centre = torch.from_numpy(spline.center_mm).to(device)
    axes = [torch.arange(n, dtype=torch.float64, device=device) for n in shape]
    voxels = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    out = torch.empty_like(voxels)
    step = max(1, 2**26 // (8 * landmarks.shape[0]))
    for start in range(0, voxels.shape[0], step):
        x = (voxels[start : start + step] * spacing_t - centre) / spline.scale_mm
        r = x[:, None, :] - landmarks[None, :, :]  # (V, K, 3)
        norm = r.norm(dim=-1)
        dot = (r * coefficients[None]).sum(-1)
        u = (spline.alpha * norm**3)[..., None] * coefficients[None] - 3.0 * (norm * dot)[..., None] * r
        out[start : start + step] = u.sum(1) + x @ affine[:3] + affine[3]
    return (out / spacing_t).T.reshape(3, *shape).float()


def bench_ebs(bench: Bench, count: int, parity: dict[str, float]) -> None:
    device = bench.device
    grid, spacing = (64, 64, 16), (1.9, 1.9, 7.9)
    rng = np.random.default_rng(0)
    source = rng.uniform([20, 20, 20], [100, 100, 100], size=(count, 3))
    spline = fit_ebs(source, rng.normal(0, 3, size=source.shape))
    on = (
        (lambda: spline.on_grid(grid, spacing, device=device))
        if device.type == "cuda"
        else (lambda: spline.on_grid(grid, spacing))
    )
    row = bench.compare(
        f"EBS on the 64x64x16 grid, {count} landmarks",
        on,
        "torch dense (float64, blocks)",
        lambda: _torch_ebs_on_grid(spline, grid, spacing, device),
        _max_abs,
    )
    if device.type == "cuda":
        parity[row["case"]] = _launcher_difference(on(), spline.on_grid(grid, spacing))


def bench_registration(bench: Bench, grid: tuple[int, int, int]) -> None:
    """One registration (network + exp + warp) and one training step of the overlap recipe."""
    device = bench.device
    torch.manual_seed(0)
    model = SVFNet(SVFNetConfig(grid=grid)).to(device).eval()
    rng = np.random.default_rng(0)
    moving, fixed = rng.random(grid, dtype=np.float32), rng.random(grid, dtype=np.float32)
    pair = torch.from_numpy(np.stack([moving, fixed])[None]).to(device)
    moving_t = pair[:, :1]
    integrate = VecInt(grid, 7).to(device)
    transformer = SpatialTransformer(grid).to(device)

    def ours() -> torch.Tensor:
        with torch.no_grad():
            svf = model(pair)
            return fields.warp(moving_t[0], fields.exp(svf[0], steps=7))

    def peer() -> torch.Tensor:
        with torch.no_grad():
            return transformer(moving_t, integrate(model(pair)))[0]

    bench.compare(
        f"registration {'x'.join(map(str, grid))} (network + exp + warp)",
        ours,
        "the same network + VecInt + SpatialTransformer",
        peer,
        _max_abs,
    )

    train_model = SVFNet(SVFNetConfig(grid=grid)).to(device).train()
    optimiser = torch.optim.Adam(train_model.parameters(), lr=1e-4)
    batch = 2
    pairs = torch.from_numpy(rng.random((batch, 2, *grid), dtype=np.float32)).to(device)
    target = torch.from_numpy(smooth_field(grid, 3.0, seed=5, batch=batch)).to(device)
    labels = (rng.random((2, batch, 4, *grid)) > 0.7).astype(np.float32)
    moving_regions, fixed_regions = (torch.from_numpy(lab).to(device) for lab in labels)

    def step(overlap: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], float]:
        def run() -> float:
            optimiser.zero_grad(set_to_none=True)
            prediction = train_model(pairs)
            loss = masked_mse(prediction, target, None) + 3.0 * overlap(prediction)
            loss.backward()
            optimiser.step()
            return float(loss.detach())

        return run

    def peer_overlap(prediction: torch.Tensor) -> torch.Tensor:
        integrate_used = VecInt(grid, fields.exp_steps(float(prediction.detach().abs().max()))).to(device)
        warped = transformer(moving_regions, integrate_used(prediction))
        return 1.0 - torch.nanmean(soft_dice(warped, fixed_regions))

    bench.compare(
        f"training step, overlap recipe, batch {batch}",
        step(lambda p: label_overlap_loss(p, moving_regions, fixed_regions)),
        "the same step with VecInt + grid_sample in the loss",
        step(peer_overlap),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--out", type=Path, default=Path("build/gpu-check"), help="folder for the results")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes and few rounds (checks the script)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not svfnet.cuda_available():
        print(
            f"benchmarks/gpu.py: --device {args.device}: svfnet.cuda_available() is False "
            f"(build_info: {svfnet.build_info()}; torch sees {torch.cuda.device_count()} CUDA device(s))",
            file=sys.stderr,
        )
        return 2
    rounds, warmup = (3, 1) if args.quick else (args.rounds, args.warmup)
    grids = {"32x32x8": (32, 32, 8)} if args.quick else {"64x64x16": (64, 64, 16), "128^3": (128, 128, 128)}
    bench = Bench(device, rounds, warmup)
    parity: dict[str, float] = {}
    sections = [
        ("fields", lambda: bench_fields(bench, grids, parity)),
        ("overlap loss", lambda: bench_overlap_loss(bench, (32, 32, 8) if args.quick else (64, 64, 16), 2)),
        ("kernel sums", lambda: bench_kernel_sums(bench, 2_000 if args.quick else 20_000, parity)),
        ("EBS", lambda: bench_ebs(bench, 200 if args.quick else 1000, parity)),
        ("registration", lambda: bench_registration(bench, (32, 32, 8) if args.quick else (64, 64, 16))),
    ]
    failures = []
    for name, run in sections:  # one failing section does not hide the others' numbers
        try:
            run()
        except Exception as error:  # noqa: BLE001 - recorded and reported, the exit status says it
            failures.append(f"{name}: {type(error).__name__}: {error}")
            print(f"FAILED {name}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
    info = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "svfnet_build": {k: str(v) for k, v in svfnet.build_info().items()},
        "cpu_threads": torch.get_num_threads(),
        "rounds": rounds,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"info": info, "rows": bench.rows, "cuda_minus_cpu_launcher": parity, "failures": failures}
    (args.out / "gpu_benchmark.json").write_text(json.dumps(result, indent=2, default=str))
    lines = [
        f"device: {info['device']}; torch {info['torch']} (CUDA {info['torch_cuda']}); medians of {rounds}",
        "",
        "| case | svfnet ms | peer | peer ms | peer / svfnet | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for row in bench.rows:
        peer_ms = f"{row['peer_ms']:.3f}" if "peer_ms" in row else ""
        ratio = f"{row['ratio']:.1f}x" if "ratio" in row and math.isfinite(row["ratio"]) else ""
        diff = f"{row['max_difference_vs_peer']:.1e}" if "max_difference_vs_peer" in row else ""
        lines.append(
            f"| {row['case']} | {row['svfnet_ms']:.3f} | {row['peer']} | {peer_ms} | {ratio} | {diff} |"
        )
    if parity:
        lines += ["", "| svfnet CUDA − CPU launcher, same inputs | max abs difference |", "|---|---|"]
        lines += [f"| {case} | {value:.2e} |" for case, value in parity.items()]
    lines += ["", *(f"FAILED {failure}" for failure in failures)]
    (args.out / "gpu_benchmark.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

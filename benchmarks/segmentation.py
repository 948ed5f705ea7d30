"""Multi-atlas segmentation measured on a demo work folder: how the defaults of svfnet.segmentation.multi_atlas
were chosen (docs/segment.md).

Every validation and test subject of WORKDIR (split.json) is segmented from the training subjects
(the atlases) from its raw image (``WORKDIR/raw/<id>.nii.gz``, the synthetic cohort's original
geometry) and scored against its raw labels on its original grid: Dice per region for each single
atlas (mean over atlases), the majority vote and the weighted vote over a grid of sharpness and
LCC window; atlas selection by correlation against random subsets; the uncertainty on wrong and
right voxels; whether each region's true volume lies in the atlases' interval; how far the rigid
alignment left the LV centre from the atlases'; the best correlation of images without a heart;
and the time of one ``svfnet.segment`` call with 20 atlases.

    python benchmarks/segmentation.py WORKDIR [--model CKPT] [--out results.json] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from svfnet.data.labels import IDENTITY_LABELS
from svfnet.data.nifti import read_nifti
from svfnet.data.transform import resample_labels
from svfnet.evaluation.metrics import dice
from svfnet.registration.prepare import OriginalImage, read_original
from svfnet.segmentation.atlas_registration import local_correlations, register_atlases
from svfnet.segmentation.atlases import image_similarity, read_atlases
from svfnet.segmentation.fusion import (
    DEFAULT_SHARPNESS,
    argmax_labels,
    fuse,
    lcc_weights,
    normalised_entropy,
)
from svfnet.segmentation.multi_atlas import segment
from svfnet.segmentation.outputs import probabilities_to_original
from svfnet.segmentation.target import DEFAULT_REFERENCES, prepare_target
from svfnet.training.model import load

REGION_VALUES = (1, 2, 3, 4)
SHARPNESS = (3.0, 10.0, 30.0, 100.0, 300.0)
SIGMAS_MM = (2.0, 3.0, 5.0, 8.0)
REFERENCES = (1, 3, 5)
COUNTS = (4, 8, 12)


def _dices(labels: np.ndarray, truth: np.ndarray) -> list[float]:
    return [dice(labels == r, truth == r) for r in REGION_VALUES]


def _labels_of(probabilities: np.ndarray, prepared, values) -> np.ndarray:
    return argmax_labels(probabilities_to_original(probabilities, prepared.transform), values)


def _lv_centre_offset_mm(prepared, truth: np.ndarray, atlases) -> float:
    """Distance (mm) between the target's LV blood-pool centroid on the prepared grid (its true labels
    resampled with the alignment's transform) and the atlases' mean LV centroid."""
    matrix = prepared.transform.prepared_to_original_voxel
    index = np.indices(prepared.transform.prepared_shape, dtype=np.float64).reshape(3, -1)
    positions = matrix[:3, :3] @ index + matrix[:3, 3:]
    on_grid = resample_labels(truth, positions).reshape(prepared.transform.prepared_shape)
    spacing = np.array(atlases.grid.spacing_mm)
    centre = np.argwhere(on_grid == 1).mean(axis=0) * spacing
    atlas_centre = (
        np.mean([np.argwhere(a.labels == 1).mean(axis=0) for a in atlases.atlases], axis=0) * spacing
    )
    return float(np.linalg.norm(centre - atlas_centre))


def _no_heart_images(workdir: Path, subject_id: str, rng: np.random.Generator) -> dict[str, OriginalImage]:
    image, affine = read_nifti(workdir / "raw" / f"{subject_id}.nii.gz", kind="image")
    truth = read_nifti(workdir / "raw" / f"{subject_id}_gt.nii.gz", kind="labels")[0]
    from scipy.ndimage import gaussian_filter

    cases = {
        "noise": rng.normal(100.0, 30.0, image.shape).astype(np.float32),
        "smooth blobs": (gaussian_filter(rng.normal(size=image.shape), (4, 4, 1)) * 1000).astype(np.float32),
    }
    # the largest slab of columns without any labelled voxel (the chest beside the heart)
    columns = np.flatnonzero(truth.any(axis=(1, 2)))
    low, high = columns.min(), columns.max()
    crops = {}
    if low > image.shape[0] - 1 - high:
        crops["chest beside the heart"] = (slice(0, max(low - 2, 2)), affine)
    else:
        shift = np.eye(4)
        shift[0, 3] = high + 2
        crops["chest beside the heart"] = (slice(high + 2, image.shape[0]), affine @ shift)
    out = {name: OriginalImage(v, affine, None, None, Path(name), None) for name, v in cases.items()}
    for name, (cut, crop_affine) in crops.items():
        out[name] = OriginalImage(np.ascontiguousarray(image[cut]), crop_affine, None, None, Path(name), None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = args.workdir
    checkpoint = args.model or workdir / "models" / "svfnet" / "checkpoint.pt"
    net = load(checkpoint)
    split = json.loads((workdir / "split.json").read_text())
    atlases = read_atlases(workdir, split["train"])
    values = atlases.label_values
    targets = list(split["val"]) + list(split["test"])
    rng = np.random.default_rng(0)
    rows: dict[str, dict] = {}
    for target in targets:
        original = read_original("image", workdir / "raw" / f"{target}.nii.gz", None, dict(IDENTITY_LABELS))
        truth = read_nifti(workdir / "raw" / f"{target}_gt.nii.gz", kind="labels")[0]
        offsets, align_s = {}, {}
        for count in REFERENCES:
            tick = time.perf_counter()
            candidate = prepare_target(original, atlases, references=count)
            align_s[count] = time.perf_counter() - tick
            offsets[count] = _lv_centre_offset_mm(candidate, truth, atlases)
            if count == DEFAULT_REFERENCES:
                prepared = candidate
        images = np.stack([a.image for a in atlases.atlases])
        ncc = image_similarity(prepared.image, images, prepared.inside)
        rigid_lcc = local_correlations(images, prepared.image, atlases.grid.spacing_mm, 5.0)
        mean_lcc = np.array([m[prepared.inside].mean() for m in rigid_lcc])
        registrations = register_atlases(net, prepared.image, atlases, batch_size=8)
        row: dict = {
            "role": "val" if target in split["val"] else "test",
            "align_s": align_s,
            "register_s": registrations.seconds,
            "lv_centre_offset_mm": offsets,
            "best_ncc": float(ncc.max()),
            "top8_same_by_ncc_and_lcc": len(set(np.argsort(-ncc)[:8]) & set(np.argsort(-mean_lcc)[:8])),
        }
        singles = np.array(
            [_dices(_labels_of(p, prepared, values), truth) for p in registrations.probabilities]
        )
        row["single"] = singles.mean(axis=0).tolist()
        majority = fuse(registrations.probabilities)
        row["majority"] = _dices(_labels_of(majority, prepared, values), truth)
        for sigma in SIGMAS_MM:
            lcc = local_correlations(
                registrations.warped_images, prepared.image, atlases.grid.spacing_mm, sigma
            )
            for sharpness in SHARPNESS:
                fused = fuse(registrations.probabilities, lcc_weights(lcc, sharpness))
                row[f"weighted s={sharpness:g} sigma={sigma:g}"] = _dices(
                    _labels_of(fused, prepared, values), truth
                )
        lcc5 = local_correlations(registrations.warped_images, prepared.image, atlases.grid.spacing_mm, 5.0)
        for count in [c for c in COUNTS if c < len(atlases)]:
            chosen = np.argsort(-ncc)[:count]
            fused = fuse(registrations.probabilities[chosen], lcc_weights(lcc5[chosen], DEFAULT_SHARPNESS))
            row[f"top {count} by NCC"] = _dices(_labels_of(fused, prepared, values), truth)
            draws = []
            for _ in range(5):
                pick = rng.choice(len(atlases), count, replace=False)
                fused = fuse(registrations.probabilities[pick], lcc_weights(lcc5[pick], DEFAULT_SHARPNESS))
                draws.append(_dices(_labels_of(fused, prepared, values), truth))
            row[f"random {count}"] = np.mean(draws, axis=0).tolist()
        # uncertainty and volumes of the default (weighted, all atlases)
        probabilities = probabilities_to_original(
            fuse(registrations.probabilities, lcc_weights(lcc5, DEFAULT_SHARPNESS)), prepared.transform
        )
        labels = argmax_labels(probabilities, values)
        uncertainty = normalised_entropy(probabilities)
        wrong = labels != truth
        row["uncertainty_wrong"] = float(uncertainty[wrong].mean())
        row["uncertainty_right_heart"] = float(uncertainty[~wrong & ((labels > 0) | (truth > 0))].mean())
        row["uncertainty_right_all"] = float(uncertainty[~wrong].mean())
        bins = np.digitize(uncertainty, [0.1, 0.3, 0.5])
        row["error_rate_by_uncertainty_bin"] = [
            float(wrong[bins == b].mean()) if np.any(bins == b) else None for b in range(4)
        ]
        voxel_ml = abs(np.linalg.det(original.affine[:3, :3])) / 1000.0
        prepared_ml = float(np.prod(atlases.grid.spacing_mm)) / 1000.0
        inside = []
        for channel, value in enumerate(values):
            if value == 0:
                continue
            vols = (
                (registrations.probabilities[:, channel] * prepared.inside).reshape(len(atlases), -1).sum(1)
            )
            low, high = np.percentile(vols * prepared_ml, (10, 90))
            true_ml = np.count_nonzero(truth == value) * voxel_ml
            inside.append(bool(low <= true_ml <= high))
        row["true_volume_in_interval"] = inside
        # one direction only (half the network passes)
        one_way = register_atlases(net, prepared.image, atlases, batch_size=8, symmetric=False)
        row["one_way_register_s"] = one_way.seconds
        lcc_one = local_correlations(one_way.warped_images, prepared.image, atlases.grid.spacing_mm, 5.0)
        fused = fuse(one_way.probabilities, lcc_weights(lcc_one, DEFAULT_SHARPNESS))
        row["weighted, one direction"] = _dices(_labels_of(fused, prepared, values), truth)
        rows[target] = row
        print(
            target,
            {
                k: (
                    np.round(np.asarray(v, float), 3).tolist() if isinstance(v, list) and None not in v else v
                )
                for k, v in row.items()
                if not k.startswith("weighted")
            },
            flush=True,
        )

    # images without a heart: the best correlation with any atlas after the rigid alignment
    no_heart = {}
    cases = {}
    for target in targets:
        cases.update({f"{target} {k}": v for k, v in _no_heart_images(workdir, target, rng).items()})
    for name, image in cases.items():
        try:
            prepared = prepare_target(image, atlases)
            no_heart[name] = float(
                image_similarity(
                    prepared.image, np.stack([a.image for a in atlases.atlases]), prepared.inside
                ).max()
            )
        except ValueError as error:
            no_heart[name] = f"refused: {error}"
    print("no heart:", no_heart)

    # one whole call with 20 atlases (training + validation + test subjects other than the target)
    everyone = list(split["train"]) + list(split["val"]) + list(split["test"])
    target = split["test"][0]
    twenty = [s for s in everyone if s != target][:20]
    timing = []
    for fusion in ("majority", "weighted"):
        tick = time.perf_counter()
        result = segment(
            workdir / "raw" / f"{target}.nii.gz", net, workdir, atlas_subjects=twenty, fusion=fusion
        )
        timing.append(
            {
                "fusion": fusion,
                "atlases": len(result.atlas_ids),
                "seconds": time.perf_counter() - tick,
                "timings_s": result.volumes["timings_s"],
            }
        )
    print("20 atlases:", timing)

    methods = [
        k
        for k in next(iter(rows.values()))
        if isinstance(rows[targets[0]][k], list)
        and len(rows[targets[0]][k]) == 4
        and k not in ("true_volume_in_interval", "error_rate_by_uncertainty_bin")
    ]
    print("\n| method | role | LV BP | LV myo | RV BP | RV myo | mean |\n|---|---|---|---|---|---|---|")
    for method in methods:
        for role in ("test", "val"):
            scores = np.array([r[method] for r in rows.values() if r["role"] == role])
            if len(scores):
                m = scores.mean(axis=0)
                print(
                    f"| {method} | {role} ({len(scores)}) | "
                    + " | ".join(f"{v:.3f}" for v in m)
                    + f" | {m.mean():.3f} |"
                )
    summary = {"rows": rows, "no_heart_best_ncc": no_heart, "timing_20_atlases": timing}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2, default=float))


if __name__ == "__main__":
    main()

"""``svfnet synth OUT``: write the built-in synthetic cohort as a plain-layout dataset."""

from __future__ import annotations

import argparse

from svfnet.commands.guard import guarded

HEADER_STYLES = (
    "itk",
    "acdc",
    "qform-only",
    "sform-only",
    "disagree",
    "oblique",
)  # = synthetic_headers.HEADER_STYLES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write the built-in synthetic cardiac cohort (NIfTI, plain layout)",
        description="Writes N synthetic end-diastolic short-axis volumes with their label maps "
        "(OUT/synth_NNN.nii.gz + OUT/synth_NNN_gt.nii.gz, labels in svfnet's values) and OUT/synth.json "
        "(every subject's parameters). Then: svfnet prepare OUT WORKDIR. "
        "With --realistic, a cohort that meets real cine MRI's problems instead: ACDC's five groups "
        "(NOR, MINF, DCM, HCM, RV: recorded per subject in synth.json), 0.7-2 mm pixels on fields of "
        "view of varied size and shape, 5-10 mm slices, stacks that miss the apex or the base, "
        "slices shifted in plane by breath-hold misregistration (images and labels alike), coil "
        "bias, slice gains, low SNR and bSSFP bands, and NIfTI headers in the styles met in public "
        "data; synth.json records each subject's true voxel-to-RAS affine (as ITK reads it).",
    )
    parser.add_argument("out", metavar="OUT", help="dataset folder to create (must be empty unless --force)")
    parser.add_argument(
        "--subjects", type=int, default=40, metavar="N", help="number of subjects (default 40)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="cohort seed (default 0)")
    parser.add_argument(
        "--outliers",
        type=float,
        default=0.1,
        metavar="FRACTION",
        help="probability of an outlier heart: dilated LV or small RV (default 0.1; not with --realistic, "
        "whose groups are drawn evenly)",
    )
    parser.add_argument(
        "--realistic",
        action="store_true",
        help="the clinical cohort (realism='clinical') described above, not the standard one",
    )
    parser.add_argument(
        "--header-style",
        choices=HEADER_STYLES,
        default=None,
        metavar="STYLE",
        help="with --realistic: write every subject's NIfTI header in this style (default: drawn per "
        "subject). itk: qform = sform, codes 1, axis-aligned; acdc: qform code 0, sform code 2 "
        "holding the rotation without the voxel size (only in pixdim); qform-only; sform-only "
        "(code 2); disagree: qform and sform both set and different (ITK reads the qform unless the "
        "sform's code is 1); oblique: qform = sform, codes 1, the patient's double-oblique pose",
    )
    parser.add_argument(
        "--max-voxels",
        type=int,
        default=None,
        metavar="N",
        help="with --realistic: the most voxels a volume may have (default 3000000)",
    )
    parser.add_argument("--force", action="store_true", help="write into a folder that already holds files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=guarded(run, writes="out", what="dataset folder", recover=False, beside=True))


def run(args: argparse.Namespace) -> int:
    from svfnet.common.limits import MAX_SEED, MAX_SUBJECTS, check_disk, check_int, synthetic_disk_bytes
    from svfnet.data.synthetic import write_synthetic_dataset

    check_int(args.subjects, "--subjects", 1, MAX_SUBJECTS)  # 10^11 subjects wrote until the disk was full
    check_int(args.seed, "--seed", 0, MAX_SEED)
    check_disk(
        synthetic_disk_bytes(args.subjects, "clinical" if args.realistic else "standard"),
        args.out,
        f"the synthetic cohort of {args.subjects:,} subjects",
        "lower --subjects",
    )

    if not args.realistic and args.header_style is not None:
        raise ValueError("--header-style needs --realistic (the standard cohort's headers are ITK's)")
    if not args.realistic and args.max_voxels is not None:
        raise ValueError("--max-voxels needs --realistic (the standard cohort's volumes are small)")
    options = {} if args.max_voxels is None else {"max_voxels": args.max_voxels}
    written = write_synthetic_dataset(
        args.out,
        args.subjects,
        args.seed,
        outlier_fraction=args.outliers,
        realism="clinical" if args.realistic else "standard",
        header_style=args.header_style,
        **options,
        overwrite=args.force,
        progress=not args.no_progress,
    )
    kind = "realistic " if args.realistic else ""
    print(f"wrote {len(written)} {kind}synthetic subjects (seed {args.seed}) to {args.out}")
    return 0

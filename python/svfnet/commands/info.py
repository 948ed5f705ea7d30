"""``svfnet info``: what this installation of svfnet can do (build, threads, CUDA)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="show how svfnet was built and what it can use here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import svfnet

    info = svfnet.build_info()
    print(f"svfnet {info['version']} ({info['compiler']}, OpenMP {'on' if info['openmp'] else 'off'})")
    if info["cuda"]:
        print(f"CUDA launchers: compiled with CUDA {info['cuda_version']} for {info['cuda_architectures']}")
    else:
        print("CUDA launchers: not compiled (CPU only)")
    print(f"CUDA device available: {'yes' if svfnet.cuda_available() else 'no'}")
    print(f"CPU threads (torch): {torch.get_num_threads()}")
    print(
        f"CPU work on one thread below: {info['min_parallel_work']:,} voxel-operations "
        "(SVFNET_MIN_PARALLEL_WORK)"
    )
    return 0

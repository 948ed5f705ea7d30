"""LCC Log-Demons a pair, this checkout against the Python code of another revision, side by side.

Both sides run the same synthetic pairs (inter-subject pairs of the cohort of seed 0, prepared on
64×64×16 as ``svfnet synth`` + ``svfnet prepare`` do) at the demons' defaults, in alternating
subprocesses, and report the time of every pair and the Dice of its four regions after
registration. The other revision's ``python/svfnet`` is exported to a temporary folder and run with
this checkout's compiled extension (the revision's own ops must exist in it: true for revisions
whose changes since are additions), so the comparison isolates the Python-level change.

    python -m benchmarks.demons_before_after --before 74a06ab [--pairs 6] [--rounds 2] [--threads 1 2]

Medians per side and thread count go to stdout, with whether every pair's Dice is identical (to
6 digits) on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(data: Path, pairs: int) -> None:
    """Times ``pairs`` registrations of the subjects in ``data`` (one JSON line each)."""
    import numpy as np
    import torch

    torch.set_num_threads(int(os.environ["SVFNET_BENCH_THREADS"]))
    from svfnet.baselines import lcc_demons
    from svfnet.evaluation import metrics
    from svfnet.ops import fields

    with np.load(data) as subjects:
        images, labels, spacings = subjects["images"], subjects["labels"], subjects["spacing"]
    for n in range(pairs):
        moving, fixed = (n + 1) % len(images), n % len(images)  # consecutive subjects: (1, 0), (2, 1), ...
        spacing = tuple(float(s) for s in spacings[fixed])
        started = time.perf_counter()
        svf = lcc_demons.register(images[moving], images[fixed], spacing=spacing)
        seconds = time.perf_counter() - started
        warped = np.asarray(fields.warp_labels(labels[moving], fields.exp(svf)))
        dice = [round(metrics.dice(warped == r, labels[fixed] == r), 6) for r in (1, 2, 3, 4)]
        print(json.dumps({"pair": f"{moving}->{fixed}", "seconds": seconds, "dice": dice}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the git revision to compare against")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.pairs)
        return 0

    import numpy as np
    from tests.demons_fixtures import prepared_subjects

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        subjects = prepared_subjects(folder / "cohort", args.pairs + 1 if args.pairs > 1 else 2, 0)
        data = folder / "subjects.npz"
        np.savez(
            data,
            images=np.stack([np.asarray(s.image, np.float32) for s in subjects]),
            labels=np.stack([np.asarray(s.labels, np.int32) for s in subjects]),
            spacing=np.array([s.spacing_mm for s in subjects]),
        )
        before = folder / "before"
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.before, "python/svfnet"], check=True, capture_output=True
        ).stdout
        before.mkdir()
        (folder / "before.tar").write_bytes(archive)
        with tarfile.open(folder / "before.tar") as tar:
            tar.extractall(before, filter="data")
        import svfnet._core as core

        extension = Path(core.__file__)
        (before / "python" / "svfnet" / extension.name).write_bytes(extension.read_bytes())
        # the revision's package first, ahead of this checkout's editable install
        launcher = (
            "import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in type(f).__module__]; "
            f"sys.path[:0] = [{str(before / 'python')!r}, {str(REPO)!r}]; "
            "from benchmarks.demons_before_after import main; main()"
        )
        results: dict[tuple[str, int], list[dict]] = {}
        for threads in args.threads:
            for _ in range(args.rounds):
                for side in ("before", "after"):
                    command = (
                        [sys.executable, "-c", launcher]
                        if side == "before"
                        else [sys.executable, "-m", __spec__.name]
                    )
                    output = subprocess.run(
                        [
                            *command,
                            "--before",
                            args.before,
                            "--pairs",
                            str(args.pairs),
                            "--worker",
                            str(data),
                        ],
                        check=True,
                        capture_output=True,
                        text=True,
                        cwd=REPO,
                        env={**os.environ, "SVFNET_BENCH_THREADS": str(threads)},
                    ).stdout
                    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
                    results.setdefault((side, threads), []).extend(rows)
                    for row in rows:
                        print(
                            f"{side:6s} {threads} thread(s) pair {row['pair']}: {row['seconds']:.3f} s, "
                            f"Dice {row['dice']}"
                        )
    print()
    for threads in args.threads:
        medians = {
            side: statistics.median(r["seconds"] for r in results[(side, threads)])
            for side in ("before", "after")
        }
        dice = {
            side: {(r["pair"], tuple(r["dice"])) for r in results[(side, threads)]}
            for side in ("before", "after")
        }
        print(
            f"{threads} thread(s): before {medians['before']:.2f} s, after {medians['after']:.2f} s a pair "
            f"(medians of {len(results[('after', threads)])}), {medians['before'] / medians['after']:.2f}x; "
            f"Dice identical on every pair: {dice['before'] == dice['after']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

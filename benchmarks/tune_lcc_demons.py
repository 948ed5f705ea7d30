"""Grid search of LCC Log-Demons' parameters on synthetic training pairs (the record of its defaults).

The search itself is the library's (:func:`svfnet.baselines.tuning_search.search_lcc_demons`, which
``svfnet demons --tune WORKDIR`` runs on a work folder's own training pairs); this script gives it
the synthetic cohort and the two stages of grids that chose ``LCCDemonsParams``' defaults.

Training pairs are inter-subject pairs of the synthetic cohort of seed 0 (subjects 0–11, prepared
on 64×64×16 as ``svfnet synth`` + ``svfnet prepare`` do), never the subjects the tests use. Every
configuration of the grid registers every pair; it is scored by the mean Dice over the four
regions and the pairs, among the configurations whose exponentials never fold (no voxel with
``det J ≤ 0`` in any pair). The table goes to stdout (Markdown) and the full record to ``--out``
(JSON), from which ``docs/evaluation.md`` quotes (the records in docs/ were written before the
search moved into the library: their ``summary`` is sorted by score, a new record's
``configurations`` are in the grid's order).

Run (each stage 10–15 minutes on 2 cores):

    python -m benchmarks.tune_lcc_demons --stage 1 --out docs/tune_lcc_demons_stage1.json
    python -m benchmarks.tune_lcc_demons --stage 2 --out docs/tune_lcc_demons_stage2.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

# Stage 1 spans the plausible ranges; stage 2 refines around stage 1's best (which sat on the
# grid's edge in sigma_elastic_mm and sigma_i), with sigma_fluid_mm fixed (it mattered least).
GRIDS = {
    1: {
        "sigma_lcc_mm": [3.0, 5.0, 8.0],
        "sigma_fluid_mm": [1.0, 2.0, 3.0],
        "sigma_elastic_mm": [2.0, 3.5, 5.0],
        "sigma_i": [0.05, 0.1, 0.3],
    },
    2: {
        "sigma_lcc_mm": [4.0, 5.0, 6.5],
        "sigma_fluid_mm": [2.0],
        "sigma_elastic_mm": [1.0, 1.5, 2.0, 2.5],
        "sigma_i": [0.2, 0.3, 0.5, 0.8],
    },
}
FIXED = {"iterations": [(30, 30, 40)]}  # one value: the iterations are not searched
TRAINING_SEED = 0
N_SUBJECTS = 12


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON record to write")
    parser.add_argument("--pairs", type=int, default=8, help="number of training pairs (default 8)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--stage", type=int, choices=sorted(GRIDS), default=max(GRIDS), help="which grid")
    args = parser.parse_args(argv)
    grid = GRIDS[args.stage]

    from tests.demons_fixtures import prepared_subjects

    from svfnet.baselines.tuning import summary_lines
    from svfnet.baselines.tuning_search import search_lcc_demons
    from svfnet.common.atomic import write_json

    with tempfile.TemporaryDirectory() as folder:
        subjects = prepared_subjects(folder, N_SUBJECTS, TRAINING_SEED)
        ids = [subject.id for subject in subjects]
        # pairs between distinct subjects, each subject used as moving and as fixed: (0, 1), (1, 2), ...
        pairs = [
            (ids[n % N_SUBJECTS], ids[(n + 1 + n // N_SUBJECTS) % N_SUBJECTS]) for n in range(args.pairs)
        ]
        result = search_lcc_demons(
            {subject.id: subject for subject in subjects}, pairs, grid={**grid, **FIXED}, workers=args.workers
        )

    for line in summary_lines(result):
        print(line)
    if args.out is not None:
        write_json(
            args.out,
            {
                "training": {
                    "generator": "svfnet.data.synthetic",
                    "seed": TRAINING_SEED,
                    "subjects": N_SUBJECTS,
                    "pairs": [list(pair) for pair in result.pairs],
                    "grid": [64, 64, 16],
                },
                "stage": args.stage,
                "grid": result.grid,
                "identity": result.identity,
                "configurations": result.configurations,
                "seconds": result.seconds,
                "workers": result.workers,
                "selected": None
                if result.selected is None
                else result.configurations[result.selected]["params"],
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

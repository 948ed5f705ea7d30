"""SVF-Net + refinement variants on a work folder's test pairs, side by side with LCC Log-Demons.

For each variant (levels and iterations of the demons started from SVF-Net's SVF), runs
``svfnet evaluate``'s machinery with the method "SVF-Net + refinement" beside SVF-Net and LCC
Log-Demons (whose records are reused between variants), then prints per region the mean Dice of the
three, the share of pairs where the refinement beats LCC Log-Demons on Dice and on the 95% Hausdorff
distance, and the median time a pair of each with their ratio (the refinement's includes the network).

Run: ``python benchmarks/refinement.py WORKDIR ["L2 (10,15)" ...]`` (a trained work folder, e.g.
``svfnet demo``'s); writes ``WORKDIR/refine_variants_N.json``. Measured results: docs/register.md.
"""

import csv
import json
import statistics as st
import sys
from pathlib import Path

from svfnet.evaluation.evaluate import run_evaluation


def main():
    work = Path(sys.argv[1])
    variants = {
        "L2 (10,15)": {"levels": 2, "iterations": (10, 15)},
        "L2 (5,10)": {"levels": 2, "iterations": (5, 10)},
        "L2 (20,25)": {"levels": 2, "iterations": (20, 25)},
        "L1 (15)": {"levels": 1, "iterations": (15,)},
        "L3 (10,10,15)": {"levels": 3, "iterations": (10, 10, 15)},
    }
    chosen = sys.argv[2:] or list(variants)
    out = []
    for name in chosen:
        run_evaluation(
            work,
            work / "models/svfnet/checkpoint.pt",
            workers=2,
            progress=False,
            methods=("svfnet", "lcc_demons"),
            include_refinement=True,
            refine_params=variants[name],
            report=False,
        )
        with open(work / "evaluation/pairs.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        by = {}
        for r in rows:
            by.setdefault(r["method"], {})[(r["moving"], r["fixed"], r["name"])] = r
        line = {"variant": name}
        for region in ("LV blood pool", "LV myocardium", "RV blood pool", "RV myocardium"):
            keys = [k for k in by["lcc_demons"] if k[2] == region]
            ref = [float(by["svfnet_refined"][k]["dice"]) for k in keys]
            lcc = [float(by["lcc_demons"][k]["dice"]) for k in keys]
            net = [float(by["svfnet"][k]["dice"]) for k in keys]
            hd_r = [float(by["svfnet_refined"][k]["hausdorff95_mm"]) for k in keys]
            hd_l = [float(by["lcc_demons"][k]["hausdorff95_mm"]) for k in keys]
            line[region] = {
                "dice": round(st.mean(ref), 3),
                "lcc": round(st.mean(lcc), 3),
                "net": round(st.mean(net), 3),
                "wins_dice": round(sum(a > b for a, b in zip(ref, lcc, strict=True)) / len(keys), 2),
                "wins_hd95": round(sum(a < b for a, b in zip(hd_r, hd_l, strict=True)) / len(keys), 2),
            }

        def t(method, rows=rows):
            return st.median(
                float(r["seconds"]) for r in rows if r["method"] == method and r["name"] == "LV blood pool"
            )

        line["seconds"] = {
            "refined": round(t("svfnet_refined"), 3),
            "lcc": round(t("lcc_demons"), 3),
            "ratio": round(t("svfnet_refined") / t("lcc_demons"), 2),
        }
        print(json.dumps(line), flush=True)
        out.append(line)
    json.dump(out, open(work / f"refine_variants_{len(out)}.json", "w"), indent=1)


if __name__ == "__main__":
    main()

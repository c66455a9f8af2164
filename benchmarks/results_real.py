"""Multi-seed results on REAL UCF-Crime features, through the real commands.

    ANOMALY_R3D34_DIR=../shared/data/ucf_crime_r3d34 python benchmarks/results_real.py [--epochs 20] [--seeds 0 1 2]

Imports the ResNet3D-34 dev set once (``ray_jobs.import_features``), then for each
recipe and seed runs ``ray_jobs.train`` and ``ray_jobs.evaluate`` (their ``main``
functions, the same code as the command line) and reports, per recipe, the dev-half
frame AUC (mean ± std over seeds), AP, the false-alarm rate on the frames of normal
videos (score > 0.5) and the wall time of train + evaluate. Every recipe gets the same
epoch budget (``--epochs``; the paper's own 20,000 iterations are ~900 epochs, far
beyond a 2-core machine), so the table compares recipes, not budgets. The table goes
into this script's section of ``benchmarks/RESULTS.md`` and the ratio of our default
to the paper preset is printed. The dev half is the only test data used; nothing
here looks at the held-back half.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anomaly import cli  # noqa: E402
from anomaly.config import read_yaml, write_yaml  # noqa: E402
from anomaly.ground_truth import bundled_file  # noqa: E402

PAPER = "tune_configs/sultani2018.yaml"
DEFAULT = "tune_configs/default.yaml"
# name -> (base YAML, overrides): the paper preset, our default, each head, and the two ablations the
# issue asks to show on dev (the false-alarm term; selecting the best validation epoch).
RECIPES = {
    "sultani2018 (paper preset)": (PAPER, {}),
    "sultani2018 + false_alarm term": (PAPER, {"loss": "false_alarm"}),
    "default (mlp, topk_bce, robust, EMA)": (DEFAULT, {}),
    # The false-alarm term against the hinge it extends, on the default's head and features (on raw
    # features the paper preset's scores collapse to ~0 for every video, so no rate can move there).
    "default, loss sultani (hinge)": (DEFAULT, {"loss": "sultani"}),
    "default, loss false_alarm (hinge + normal BCE)": (DEFAULT, {"loss": "false_alarm"}),
    "default, selection best_val": (DEFAULT, {"selection": "best_val"}),
    "rtfm head + rtfm loss": (DEFAULT, {"model": "rtfm", "loss": "rtfm", "dropout": 0.7}),
    "transformer head": (
        DEFAULT,
        {"model": "transformer", "dropout": 0.3, "lr": 3.0e-4, "weight_decay": 0.01},
    ),
}
SECTION = "## Results on real features"


def run(args: argparse.Namespace) -> list[dict]:
    from ray_jobs import evaluate as evaluate_job
    from ray_jobs import import_features as import_job
    from ray_jobs import train as train_job

    work = Path(args.work)
    store = work / "store"
    if not store.exists():
        import_job.main(
            import_job.get_args_parser().parse_args(
                [args.features, "--out", str(store), "--backbone", "r3d34"]
            )
        )
    rows = []
    for name, (base, overrides) in RECIPES.items():
        if args.recipes and not any(r in name for r in args.recipes):
            continue
        for seed in args.seeds:
            slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
            tag = f"{slug}_{seed}_{args.epochs}"
            done = work / f"eval_{tag}" / "run.json"
            if done.exists():  # finished by an earlier invocation with the same --work: reused
                rows.append({"recipe": name, "seed": seed, **json.loads(done.read_text())})
                continue
            config = work / f"{tag}.yaml"
            write_yaml(
                str(config),
                {**read_yaml(str(REPO / base)), **overrides, "seed": seed, "max_epochs": args.epochs},
            )
            started = time.perf_counter()
            train_job.main(
                train_job.get_args_parser().parse_args(
                    [
                        "--features",
                        str(store),
                        "--out",
                        str(work / f"run_{tag}"),
                        "--config",
                        str(config),
                        "--max-failures",
                        "0",
                    ]
                )
            )
            evaluate_job.main(
                evaluate_job.get_args_parser().parse_args(
                    [
                        "--features",
                        str(store),
                        "--checkpoint",
                        str(work / f"run_{tag}"),
                        "--out",
                        str(work / f"eval_{tag}"),
                        "--no-timelines",
                    ]
                )
            )
            metrics = json.loads((work / f"eval_{tag}" / "metrics.json").read_text())
            record = {
                "seconds": time.perf_counter() - started,
                **metrics,
                **normal_scores(work / f"eval_{tag}"),
            }
            done.write_text(json.dumps(record, default=str))
            rows.append({"recipe": name, "seed": seed, **record})
            print(f"{name} seed {seed}: frame AUC {metrics['frame_auc']:.4f}", flush=True)
    return rows


def normal_scores(eval_dir: Path) -> dict:
    """Mean and 99th percentile of the segment scores of the normal test videos (what a false-alarm
    term should lower), from the evaluation's ``scores.parquet``."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(eval_dir / "scores.parquet", columns=["label", "segment_scores"]).to_pydict()
    normal = [
        np.asarray(s) for s, label in zip(table["segment_scores"], table["label"], strict=True) if label == 0
    ]
    scores = np.concatenate(normal) if normal else np.zeros(1)
    return {"normal_score_mean": float(scores.mean()), "normal_score_p99": float(np.percentile(scores, 99))}


def table(rows: list[dict], epochs: int) -> str:
    lines = [
        "| recipe | seeds | dev-half frame AUC (mean ± std) | AP | false alarms on normal videos "
        "| normal segment score mean / p99 | wall s / run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in RECIPES:
        got = [r for r in rows if r["recipe"] == name]
        if not got:
            continue
        auc = [r["frame_auc"] for r in got]
        std = statistics.pstdev(auc) if len(auc) > 1 else 0.0
        lines.append(
            f"| {name} | {len(got)} | {statistics.mean(auc):.4f} ± {std:.4f} | "
            f"{statistics.mean(r['frame_ap'] for r in got):.4f} | "
            f"{100 * statistics.mean(r['false_alarm_rate'] for r in got):.2f} % | "
            f"{statistics.mean(r['normal_score_mean'] for r in got):.3f} / "
            f"{statistics.mean(r['normal_score_p99'] for r in got):.3f} | "
            f"{statistics.mean(r['seconds'] for r in got):.0f} |"
        )
    first = rows[0]
    lines.append("")
    lines.append(
        f"{epochs} epochs per run (~{22 * epochs} steps of 30 + 30 bags), protocol "
        f"`{first['evaluation_protocol']['name']}`, {first['coverage']['summary']} "
        "(blank files of the publisher are missing videos)."
    )
    return "\n".join(lines)


def write_results(text: str, command: str) -> None:
    path = REPO / "benchmarks" / "RESULTS.md"
    content = path.read_text()
    body = f"{SECTION} — `{command}` ({time.strftime('%Y-%m-%d')})\n\n{text}\n"
    if SECTION in content:
        start = content.index(SECTION)
        nxt = content.find("\n## ", start + len(SECTION))
        content = content[:start] + body + (content[nxt:] if nxt >= 0 else "")
    else:
        content = content.rstrip() + "\n\n" + body
    path.write_text(content)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_dir = os.environ.get(
        "ANOMALY_R3D34_DIR", str(REPO.parent / "shared" / "data" / "ucf_crime_r3d34")
    )
    parser.add_argument(
        "--features", default=default_dir, help="the real ResNet3D-34 dev set (ANOMALY_R3D34_DIR)"
    )
    parser.add_argument(
        "--work", default=os.path.join(tempfile.gettempdir(), "results_real"), help="store and runs"
    )
    parser.add_argument("--epochs", type=int, default=20, help="epoch budget of every recipe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="*", default=None, help="substrings of the recipe names to run")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = parser.parse_args()
    if not Path(args.features).is_dir():
        print(f"error: {args.features}: no such folder (set ANOMALY_R3D34_DIR)", file=sys.stderr)
        return 2
    bundled_file("Temporal_Anomaly_Annotation.txt")
    cli.init_ray(2)
    rows = run(args)
    (Path(args.work) / "rows.json").write_text(json.dumps(rows, indent=1, default=str))
    text = table(rows, args.epochs)
    print(text)
    paper = [r["frame_auc"] for r in rows if r["recipe"].startswith("sultani2018 (")]
    ours = [r["frame_auc"] for r in rows if r["recipe"].startswith("default (")]
    if paper and ours:
        print(f"default / paper preset frame AUC: {statistics.mean(ours) / statistics.mean(paper):.3f}x")
    if not args.no_write:
        write_results(text, f"python benchmarks/results_real.py --epochs {args.epochs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

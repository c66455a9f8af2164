"""Multi-seed results on REAL UCF-Crime features, through the real commands.

    python benchmarks/cv_select.py --store STORE --folds 3 --out cv.json   # the selection rule
    ANOMALY_R3D34_DIR=../shared/data/ucf_crime_r3d34 python benchmarks/results_real.py [--seeds 0 1 2] [--cv cv.json]

Imports the ResNet3D-34 dev set once (``ray_jobs.import_features``), then for each recipe
(``benchmarks/cv_select.RECIPES``, the same names the cross-validation uses) and seed runs
``ray_jobs.train`` and ``ray_jobs.evaluate`` (their ``main`` functions, the same code as the
command line) and reports, per recipe, the selection figure (3-fold CV bag AUC on the train
split's video labels, from ``--cv``) beside the dev-half frame AUC (mean ± std over seeds), AP,
the false-alarm rate on the frames of normal videos and the detection rate of anomalous frames
(both at score > 0.5) and the wall time of train + evaluate. Each recipe trains for its own
``max_epochs`` unless ``--epochs`` sets one budget for all. The table goes into this script's
section of ``benchmarks/RESULTS.md``. The dev half is reported, never used to choose; nothing
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

# The recipes (name -> base YAML, overrides) are cv_select.py's, so the cross-validation on the
# train split's video labels (the selection rule) and this dev-half table name the same things.
from benchmarks.cv_select import RECIPES  # noqa: E402

SECTION = "## Results on real features"


def run_command(job, *argv: object) -> None:
    """A ``ray_jobs`` module's ``main`` on ``argv`` (each made a string), as its command line runs it."""
    job.main(job.get_args_parser().parse_args([str(arg) for arg in argv]))


def run(args: argparse.Namespace) -> list[dict]:
    from ray_jobs import evaluate as evaluate_job
    from ray_jobs import import_features as import_job
    from ray_jobs import train as train_job

    work = Path(args.work)
    store = work / "store"
    if not store.exists():
        run_command(import_job, args.features, "--out", store, "--backbone", "r3d34")
    rows = []
    for name, (base, overrides) in RECIPES.items():
        if args.recipes and not any(r in name for r in args.recipes):
            continue
        for seed in args.seeds:
            slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
            tag = f"{slug}_{seed}_{args.epochs or 'own'}"
            run_dir, eval_dir = work / f"run_{tag}", work / f"eval_{tag}"
            done = eval_dir / "run.json"
            if done.exists():  # finished by an earlier invocation with the same --work: reused
                rows.append({"recipe": name, "seed": seed, **json.loads(done.read_text())})
                continue
            config = work / f"{tag}.yaml"
            write_yaml(
                str(config),
                {
                    **read_yaml(str(REPO / base)),
                    **overrides,
                    "seed": seed,
                    **({"max_epochs": args.epochs} if args.epochs else {}),
                },
            )
            started = time.perf_counter()
            run_command(
                train_job, "--features", store, "--out", run_dir, "--config", config, "--max-failures", "0"
            )
            run_command(
                evaluate_job,
                "--features",
                store,
                "--checkpoint",
                run_dir,
                "--out",
                eval_dir,
                "--no-timelines",
            )
            metrics = json.loads((eval_dir / "metrics.json").read_text())
            record = {
                "seconds": time.perf_counter() - started,
                **metrics,
                **normal_scores(eval_dir),
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


def _mean_std(values: list[float]) -> str:
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def table(rows: list[dict], epochs: int | None, cv: list[dict] | None = None) -> str:
    """One row per recipe: the selection figure (CV bag AUC on train, if given) beside the dev half's."""
    cv = cv or []
    lines = [
        "| recipe | train-split 3-fold CV bag AUC (selection rule) | seeds | dev-half frame AUC (mean ± std) "
        "| AP | false alarms on normal videos | detection rate of anomalous frames "
        "| within-video AUC | video oracle of the split | normal segment score mean / p99 | wall s / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in RECIPES:
        got = [r for r in rows if r["recipe"] == name]
        if not got:
            continue
        auc = [r["frame_auc"] for r in got]
        folds = [r["cv_bag_auc"] for r in cv if r["recipe"] == name]
        detection = [r.get("detection_rate", float("nan")) for r in got]
        lines.append(
            f"| {name} | {_mean_std(folds) + f' ({len(folds)} fits)' if folds else 'not run'} | {len(got)} | "
            f"{_mean_std(auc)} | "
            f"{statistics.mean(r['frame_ap'] for r in got):.4f} | "
            f"{100 * statistics.mean(r['false_alarm_rate'] for r in got):.2f} % | "
            f"{100 * statistics.mean(detection):.2f} % | "
            f"{statistics.mean(r.get('within_video_auc', float('nan')) for r in got):.3f} | "
            f"{statistics.mean(r.get('video_oracle_auc', float('nan')) for r in got):.4f} | "
            f"{statistics.mean(r['normal_score_mean'] for r in got):.3f} / "
            f"{statistics.mean(r['normal_score_p99'] for r in got):.3f} | "
            f"{statistics.mean(r['seconds'] for r in got):.0f} |"
        )
    first = rows[0]
    lines.append("")
    lines.append(
        f"{f'{epochs} epochs per run' if epochs else 'each recipe its own max_epochs'}, protocol "
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
    parser.add_argument(
        "--epochs", type=int, default=None, help="epoch budget of every recipe (default: each recipe's own)"
    )
    parser.add_argument("--cv", default=None, help="cv_select.py's rows (JSON): the selection column")
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
    cv = json.loads(Path(args.cv).read_text()) if args.cv else None
    text = table(rows, args.epochs, cv)
    print(text)
    if not args.no_write:
        write_results(
            text, "python benchmarks/results_real.py" + (f" --epochs {args.epochs}" if args.epochs else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

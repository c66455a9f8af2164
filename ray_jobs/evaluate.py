"""Evaluate a trained scorer on the test split: frame AUC, AP, false alarms, per-class AUC, plots.

python -m ray_jobs.evaluate --features STORE --checkpoint RUN_DIR --out EVAL_DIR
"""

from __future__ import annotations

import argparse

from anomaly import cli


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--features", required=True, help="feature store URI")
    parser.add_argument(
        "--checkpoint", required=True, help="run directory of ray_jobs.train (or its model.pt)"
    )
    parser.add_argument("--out", required=True, help="where metrics.json, roc.png and timelines/ go")
    parser.add_argument("--split", default="test", choices=["test", "train"], help="split to evaluate")
    parser.add_argument("--no-timelines", action="store_true", help="skip the per-video timeline PNGs")
    return parser


def format_metrics(metrics: dict) -> str:
    def pct(value):
        return "n/a" if value is None or value != value else f"{100 * value:.2f}"

    lines = [
        f"frame AUC        {pct(metrics['frame_auc'])}   (Sultani et al. C3D: 75.41)",
        f"frame AP         {pct(metrics['frame_ap'])}",
        f"false alarms@0.5 {pct(metrics['false_alarm_rate'])} % of normal frames",
    ]
    lines += [f"  AUC {name:<16s} {pct(auc)}" for name, auc in sorted(metrics["per_class_auc"].items())]
    for name, values in sorted(metrics.get("per_dataset", {}).items()):
        region = f", region AUC {pct(values['region_auc'])}" if "region_auc" in values else ""
        lines.append(f"data set {name:<16s} frame AUC {pct(values['frame_auc'])}{region}")
    if "region_level" in metrics:
        region = metrics["region_level"]
        lines.append(
            f"region level     AUC {pct(region['auc'])}, EER {pct(region['eer'])}, detection rate@0.5 "
            f"{pct(region['detection_rate'])} ({region['anomalous_frames']} anomalous frames, "
            f"{region['grid']}x{region['grid']} cells)"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from anomaly.evaluation import evaluate

    metrics = evaluate(
        args.features, args.checkpoint, args.out, split=args.split, timelines=not args.no_timelines
    )
    print(f"{metrics['num_videos']} {args.split} videos, {metrics['num_frames']} frames")
    print(format_metrics(metrics))
    heatmaps = ", heatmaps/" if metrics.get("heatmaps") else ""
    print(f"wrote {args.out}/metrics.json, roc.png, timelines/{heatmaps}")
    return 0


if __name__ == "__main__":
    cli.run(main, get_args_parser())

"""Evaluate a trained scorer on the test split: frame AUC, AP, false alarms, per-class AUC, plots.

python -m ray_jobs.evaluate --features STORE --checkpoint RUN_DIR --out EVAL_DIR
"""

from __future__ import annotations

import argparse

from anomaly import cli
from anomaly.protocols import PROTOCOLS
from anomaly.reports import format_metrics


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(__doc__)
    parser.add_argument("--features", required=True, help="feature store URI")
    parser.add_argument(
        "--checkpoint", required=True, help="run directory of ray_jobs.train (or its model.pt)"
    )
    parser.add_argument("--out", required=True, help="where metrics.json, roc.png and timelines/ go")
    parser.add_argument("--split", default="test", choices=["test", "train"], help="split to evaluate")
    parser.add_argument("--no-timelines", action="store_true", help="skip the per-video timeline PNGs")
    parser.add_argument(
        "--protocol",
        default="clips",
        choices=sorted(PROTOCOLS),
        help="frame-level protocol (recorded in metrics.json): clips = frame -> clip -> segment (default); "
        "sultani_matlab = Sultani et al.'s Evaluate_Anomaly_Detector.m; snippet16 = RTFM-era 16-frame "
        "snippets; frames32 = frames cut into 32 equal runs",
    )
    cli.add_ground_truth_arguments(parser, frame_counts_note=" (only the lists are used here)")
    return parser


def main(args: argparse.Namespace) -> int:
    from anomaly.evaluation import evaluate
    from anomaly.ground_truth import GroundTruth

    truth = GroundTruth.load(args.annotations, args.frame_counts)
    metrics = evaluate(
        args.features,
        args.checkpoint,
        args.out,
        split=args.split,
        timelines=not args.no_timelines,
        protocol=args.protocol,
        truth=truth,
    )
    print(f"{metrics['coverage']['summary']}; {metrics['num_frames']} frames, protocol {args.protocol}")
    print(format_metrics(metrics))
    heatmaps = ", heatmaps/" if metrics.get("heatmaps") else ""
    print(f"wrote {args.out}/metrics.json, roc.png, timelines/{heatmaps}")
    return 0


if __name__ == "__main__":
    cli.run(main, get_args_parser())

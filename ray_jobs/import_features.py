"""Import published per-video feature files (.txt/.npy, local or any URI) into a feature store.

python -m ray_jobs.import_features SRC --out STORE [--annotations FILE] [--frame-counts FILE ...]
"""

from __future__ import annotations

import argparse

from anomaly import cli
from anomaly.ground_truth import GroundTruth
from anomaly.importers import import_features


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(__doc__)
    parser.add_argument("src", help="folder, URI prefix (s3://…) or single file of per-video feature files")
    parser.add_argument("--out", required=True, help="feature store URI (local folder or s3://…)")
    cli.add_ground_truth_arguments(parser)
    parser.add_argument(
        "--backbone", default="imported", help="name of the backbone that made the features, e.g. c3d"
    )
    cli.add_ray_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    truth = GroundTruth.load(args.annotations, args.frame_counts)
    cli.init_ray(args.num_cpus)
    report = import_features(args.src, args.out, truth=truth, backbone=args.backbone)
    for uri, reason in report.skipped:
        print(f"skipped: {uri}: {reason}")
    print(f"imported {report.total_imported} videos into {args.out}:")
    for (split, label), count in sorted(report.imported.items()):
        print(f"  {split:5s} {'anomalous' if label else 'normal':9s} {count}")
    print(f"skipped {len(report.skipped)} files; {report.already_present} already in the store")
    return 0 if report.total_imported or report.already_present or not report.skipped else 1


if __name__ == "__main__":
    cli.run(main, get_args_parser())

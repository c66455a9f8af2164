"""Export a feature store as the published per-video formats (Sultani/Dubey text, RTFM .npy, plain .npy).

python -m ray_jobs.export_features STORE --format sultani-txt|rtfm-npy|npy --out DIR
    [--level segments|clips] [--split train|test]

sultani-txt: <id>.txt, 32 x D text (Sultani's and Dubey's releases); rtfm-npy: <id>.npy (T, crops, D)
plus rtfm-train.list / rtfm-test.list (anomalous videos first), as RTFM, MGFN and UR-DMU read them;
npy: <id>.npy (32, D), or (32, crops, D) for ten-crop stores. Import the files back with
ray_jobs.import_features: the same bags come back. Streams the store in record batches.
"""

from __future__ import annotations

import argparse

from anomaly import cli
from anomaly.export import FORMATS, LEVELS, export_features


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(__doc__)
    parser.add_argument("store", help="feature store URI (local folder or s3://…)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="published format to write")
    parser.add_argument("--out", required=True, help="folder or URI prefix for the per-video files")
    parser.add_argument(
        "--level",
        default="segments",
        choices=LEVELS,
        help="rtfm-npy only: segments = the store's 32 per video (default); clips = one row per clip from "
        "the clip table, raw, as RTFM's test-time alignment expects (extracted stores only)",
    )
    parser.add_argument(
        "--split", default=None, choices=["train", "test"], help="only this split (default: all)"
    )
    return parser


def main(args: argparse.Namespace) -> int:
    report = export_features(args.store, args.out, args.format, level=args.level, split=args.split)
    print(report.summary())
    return 0


if __name__ == "__main__":
    cli.run(main, get_args_parser())

"""Extract clip features from videos (local folder, s3:// prefix or list file) into a feature store.

python -m ray_jobs.extract VIDEOS --out STORE --backbone NAME --weights PATH_OR_URI|none
    [--annotations FILE] [--frame-counts FILE ...] [--clip-len N] [--stride N] [--crop H,W]
    [--batch-size N] [--num-gpus-per-actor F] [--concurrency MIN,MAX] [--fps-default FPS]

Re-running the same command resumes: videos already in STORE are skipped, failed ones retried.
"""

from __future__ import annotations

import argparse

from anomaly import cli
from anomaly.annotations import GroundTruth, bundled_file
from anomaly.extraction import VIDEO_EXTENSIONS, ExtractionSettings, extract
from anomaly.extractors import available_backbones


def _int_pair(text: str) -> tuple[int, int]:
    """``"H,W"`` (or ``"HxW"``) -> (H, W)."""
    parts = text.replace("x", ",").split(",")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W (two integers), got {text!r}") from None
    return h, w


def _concurrency(text: str) -> tuple[int, int]:
    """``"N"`` -> (N, N); ``"MIN,MAX"`` -> (MIN, MAX)."""
    parts = text.split(",")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN,MAX, got {text!r}") from None
    if len(numbers) == 1:
        return numbers[0], numbers[0]
    if len(numbers) == 2:
        return numbers[0], numbers[1]
    raise argparse.ArgumentTypeError(f"expected N or MIN,MAX, got {text!r}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "videos",
        help=f"folder or URI prefix searched recursively for {' '.join(VIDEO_EXTENSIONS)} files, "
        "one video file, or a .txt list file with one URI per line",
    )
    parser.add_argument("--out", required=True, help="feature store URI (local folder or s3://…)")
    parser.add_argument(
        "--backbone", required=True, help=f"feature extractor, one of: {', '.join(available_backbones())}"
    )
    parser.add_argument(
        "--weights",
        required=True,
        help="state dict (local path or any URI; use s3:// on a multi-node cluster), "
        "or 'none' for the seeded random initialisation (smoke runs only; recorded in the store)",
    )
    parser.add_argument(
        "--annotations",
        default=bundled_file("Temporal_Anomaly_Annotation.txt"),
        help="official temporal annotation file; listed videos are test (default: the bundled UCF-Crime file)",
    )
    parser.add_argument(
        "--frame-counts",
        nargs="*",
        default=[
            bundled_file("Train_Annotation_with_frame_counts.txt"),
            bundled_file("Test_Annotation_with_frame_counts.txt"),
        ],
        help="files with 'path frame_count …' lines, only cross-checked: the store keeps the decoded "
        "count (default: the bundled UCF-Crime train and test files)",
    )
    parser.add_argument(
        "--clip-len", type=int, default=None, help="frames per clip (default: the backbone's, 16 for c3d)"
    )
    parser.add_argument(
        "--stride", type=int, default=None, help="frames between clip starts (default: --clip-len)"
    )
    parser.add_argument(
        "--crop",
        type=_int_pair,
        default=None,
        help="model input H,W (default: the backbone's, 112,112 for c3d); smaller sizes for fast CPU runs",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="clips per model call")
    parser.add_argument(
        "--num-gpus-per-actor", type=float, default=0.0, help="GPUs per model actor (0: run on CPU)"
    )
    parser.add_argument(
        "--num-cpus-per-actor", type=float, default=1.0, help="CPUs per model actor (torch threads)"
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrency,
        default=(1, 1),
        help="model actors: N, or MIN,MAX for an autoscaling pool (e.g. 1,8 on 8 GPUs)",
    )
    parser.add_argument(
        "--decode-cpus", type=float, default=1.0, help="CPUs reserved per decoding task (one video each)"
    )
    parser.add_argument("--device", default="auto", help="model device: auto, cpu or cuda")
    parser.add_argument("--no-amp", action="store_true", help="run the model in float32 on GPU too")
    parser.add_argument(
        "--flush-every",
        type=int,
        default=16,
        help="finished videos per part file (a kill loses at most these)",
    )
    parser.add_argument(
        "--fps-default",
        type=float,
        default=None,
        help="frame rate recorded for videos whose container states none (default: left empty)",
    )
    cli.add_ray_arguments(parser)
    return parser


def settings_from_args(args: argparse.Namespace) -> ExtractionSettings:
    return ExtractionSettings(
        backbone=args.backbone,
        weights=args.weights,
        clip_len=args.clip_len,
        stride=args.stride,
        crop=args.crop,
        batch_size=args.batch_size,
        num_gpus_per_actor=args.num_gpus_per_actor,
        num_cpus_per_actor=args.num_cpus_per_actor,
        concurrency=args.concurrency,
        decode_num_cpus=args.decode_cpus,
        device=args.device,
        amp=not args.no_amp,
        flush_every=args.flush_every,
        fps=args.fps_default,
    )


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    settings.validate()  # one-line errors before Ray starts
    truth = GroundTruth.load(args.annotations, args.frame_counts)
    cli.init_ray(args.num_cpus)
    report = extract(args.videos, args.out, settings, truth)
    for failure in report.failed:
        print(f"failed: {failure['uri']}: {failure['reason']}")
    print(report.summary())
    return 1 if report.all_failed else 0


if __name__ == "__main__":
    cli.run(main, get_args_parser())

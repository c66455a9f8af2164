"""Extract clip features from videos (local folder, s3:// prefix or list file) into a feature store.

python -m ray_jobs.extract VIDEOS --out STORE --backbone NAME --weights PATH_OR_URI|none
    [--annotations FILE] [--frame-counts FILE ...] [--clip-len N] [--stride N] [--crop H,W]
    [--batch-size N] [--num-gpus-per-actor F] [--concurrency MIN,MAX] [--fps FPS] [--grid GxG]
    [--window-seconds S] [--crops 1|10] [--wait-for-resources 15m] [--keep-clips] [--device auto|cpu|cuda]
    [--dataset ucf_crime|ucsd|avenue|shanghaitech|auto [--labels URI] [--masks URI] [--train-list FILE]]

Folders of image frames (.tif/.jpg/.png/.bmp) are videos too. With --dataset ucsd, avenue or
shanghaitech, VIDEOS is the data set's folder in its published layout (see anomaly.ground_truth).

Re-running the same command resumes: videos already in STORE are skipped, failed ones retried.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from anomaly import cli
from anomaly.errors import AnomalyError
from anomaly.extraction import ExtractionSettings, extract
from anomaly.extractors import backbone_help
from anomaly.grid import parse_grid
from anomaly.ground_truth import DATASET_KINDS, DatasetTruth, GroundTruth, load_dataset
from anomaly.listing import VIDEO_EXTENSIONS


def get_args_parser() -> argparse.ArgumentParser:
    clips = cli.clip_flags(
        clip_len="the backbone's, 16 for c3d",
        stride="--clip-len",
        crop="the backbone's, 112,112 for c3d; smaller sizes for fast CPU runs",
    )
    parser = cli.ArgumentParser(__doc__, parents=[clips, cli.model_actor_flags()])
    parser.add_argument(
        "videos",
        help=f"folder or URI prefix searched recursively for {' '.join(VIDEO_EXTENSIONS)} files, "
        "one video file, or a .txt list file with one URI per line",
    )
    parser.add_argument("--out", required=True, help="feature store URI (local folder or s3://…)")
    parser.add_argument(
        "--backbone",
        required=True,
        help="feature extractor (width, frames, crop; the published features it reproduces; "
        f"table in docs/backbones.md): {cli.flag_text(backbone_help())}",
    )
    parser.add_argument(
        "--crops",
        type=int,
        default=1,
        choices=[1, 10],
        help="1: the centre crop; 10: the four corners, the centre and their horizontal flips, each its "
        "own feature (the RTFM-era I3D releases: --backbone i3d_r50 --crops 10)",
    )
    parser.add_argument(
        "--weights",
        required=True,
        help="state dict (local path or any URI; use s3:// on a multi-node cluster), "
        "or 'none' for the seeded random initialisation (smoke runs only; recorded in the store)",
    )
    cli.add_ground_truth_arguments(
        parser, frame_counts_note=", only cross-checked: the store keeps the decoded count"
    )
    parser.add_argument("--no-amp", action="store_true", help="run the model in float32 on GPU too")
    parser.add_argument(
        "--fps-default",
        "--fps",
        type=float,
        default=None,
        help="frame rate of inputs that state none: frame folders (default: the data set's, UCSD 10, "
        "else 25) and containers without a rate (default: left empty); a container's own rate wins",
    )
    parser.add_argument(
        "--dataset",
        default="ucf_crime",
        choices=["ucf_crime", *DATASET_KINDS, "auto"],
        help="ground truth: ucf_crime (--annotations, --frame-counts), or a frame-folder data set whose "
        "folder is VIDEOS (auto: recognised from its layout); see the README's 'Frame-folder data sets'",
    )
    parser.add_argument(
        "--labels",
        default=None,
        help="frame-folder data sets: ground-truth file or folder (UCSD .m, per-video .npy folder, "
        "concatenated .npy, .mat; default: found in the data set's folder)",
    )
    parser.add_argument(
        "--masks",
        default=None,
        help="frame-folder data sets: pixel-mask folder (default: found in the data set's folder)",
    )
    parser.add_argument(
        "--train-list",
        default=None,
        help="frame-folder data sets: file naming the training videos, one per line (e.g. the weakly "
        "supervised ShanghaiTech split); all others are test. Default: the data set's own folders",
    )
    parser.add_argument(
        "--window-seconds",
        type=float,
        default=300.0,
        help="split videos longer than 1.5 windows into windows of this many seconds, each its own decode "
        "task (a long recording parallelises; a lost task costs one window); 0: one task per video",
    )
    parser.add_argument(
        "--grid",
        default="1x1",
        help="also extract per-cell features on a GxG grid (2x2, 3x3) for localisation heat maps and "
        "region-level evaluation (default 1x1: none)",
    )
    parser.add_argument(
        "--keep-clips",
        action="store_true",
        help="keep the clip table (STORE/_clips) of committed videos, for pooling again with other "
        "segment counts; recorded in _store.json (default: a committed video's clip files are removed)",
    )
    cli.add_ray_arguments(parser)
    return parser


def settings_from_args(args: argparse.Namespace) -> ExtractionSettings:
    return ExtractionSettings(
        backbone=args.backbone,
        weights=args.weights,
        **cli.extraction_fields(args),
        amp=not args.no_amp,
        fps=args.fps_default,
        grid=parse_grid(args.grid),
        window_seconds=args.window_seconds,
        crops=args.crops,
        keep_clips=args.keep_clips,
    )


def inputs_from_args(
    args: argparse.Namespace, settings: ExtractionSettings
) -> tuple[str | dict[str, str], GroundTruth | DatasetTruth, ExtractionSettings]:
    """What to extract and its ground truth: UCF-Crime files, or a frame-folder data set's folder.

    For a data set the videos are ``{id: uri}`` (ids by :mod:`anomaly.ground_truth`'s rule) and
    frame folders get the recording's frame rate unless ``--fps`` says otherwise.
    """
    if args.dataset == "ucf_crime":
        for flag in ("labels", "masks", "train_list"):
            if getattr(args, flag):
                raise AnomalyError(
                    f"--{flag.replace('_', '-')}", "needs --dataset ucsd|avenue|shanghaitech|auto"
                )
        return args.videos, GroundTruth.load(args.annotations, args.frame_counts), settings
    truth = load_dataset(
        args.dataset, args.videos, labels=args.labels, masks=args.masks, train_list=args.train_list
    )
    print(truth.summary())
    if settings.fps is None and truth.fps:  # the recording's rate (UCSD: 10 fps)
        settings = replace(settings, fps=truth.fps)
    return truth.video_uris(), truth, settings


def main(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    settings.validate()  # one-line errors before Ray starts
    videos, truth, settings = inputs_from_args(args, settings)
    cli.init_ray(args.num_cpus)
    report = extract(videos, args.out, settings, truth)
    for failure in report.failed:
        print(f"failed: {failure['uri']}: {failure['reason']}")
    print(report.summary())
    return 1 if report.all_failed else 0


if __name__ == "__main__":
    cli.run(main, get_args_parser())

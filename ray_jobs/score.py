"""Score recordings with a trained model on Ray Data: per-clip scores, alarms with timestamps, timelines.

    python -m ray_jobs.score VIDEOS --checkpoint RUN_DIR --out OUT
        [--threshold T --min-duration S --merge-gap S] [--window S | --window-clips N]
        [--backbone NAME --weights PATH|none] [--batch-size N --concurrency MIN,MAX --num-gpus-per-actor F]
        [--annotated-video]

VIDEOS is anything ray_jobs.extract takes: one video, a folder or s3:// prefix (searched
recursively), or a .txt list file. Writes OUT/scores/ (Parquet, one row per clip),
OUT/alarms.parquet and OUT/alarms.csv (one row per alarm, highest peak first),
OUT/timelines/VIDEO.png for every video with an alarm and OUT/_failures.parquet. One video
also gets OUT/VIDEO.csv (frame,time_s,score) and OUT/VIDEO_timeline.png. Backbone and clip
settings default to those recorded with the model's training store (else the backbone's own).
Re-running the same command resumes: videos already in OUT/scores are skipped. The flags map
to anomaly.scoring.job.scoring_job's settings through one table (cli.SCORING_PARAMETERS).
"""

from __future__ import annotations

import argparse

from anomaly import cli
from anomaly.alarms import format_alarm


def get_args_parser() -> argparse.ArgumentParser:
    clips = cli.clip_flags(clip_len="as in training", stride="as in training", crop="as in training")
    window = cli.alarm_flags(
        window_help="seconds of clips averaged to score each clip: about one training segment (default "
        "2.5 s, a median UCF-Crime training segment; use the length of yours)"
    )
    parser = cli.ArgumentParser(__doc__, parents=[clips, cli.model_actor_flags(), window])
    parser.add_argument("videos", help="video, folder or URI prefix (s3://…), or a .txt list file")
    parser.add_argument(
        "--checkpoint", required=True, help="run directory of ray_jobs.train / tune (or its model.pt)"
    )
    parser.add_argument("--out", default="scores", help="folder or URI for everything written")
    parser.add_argument(
        "--backbone", default=None, help="feature extractor (default: the one the model was trained on)"
    )
    parser.add_argument(
        "--weights", default=None, help="backbone weights path/URI, or 'none' for random weights"
    )
    parser.add_argument(
        "--fps-default", type=float, default=None, help="frame rate of inputs that state none (frame folders)"
    )
    parser.add_argument(
        "--annotated-video",
        action="store_true",
        help="also write an MP4 with the score drawn (OUT/VIDEO_scored.mp4 for one video, "
        "OUT/annotated/VIDEO.mp4 for every video with an alarm)",
    )
    cli.add_ray_arguments(parser)
    return parser


def job_from_args(args: argparse.Namespace, payload: dict | None = None):
    """The one settings object, from the flag -> setting table (``cli.SCORING_PARAMETERS``, ``cli.FLAG_ALIASES``)."""
    from anomaly.scoring.job import scoring_job

    return scoring_job(args.checkpoint, payload, **cli.settings_fields(args, cli.SCORING_PARAMETERS))


def main(args: argparse.Namespace) -> int:
    from anomaly.scoring.pipeline import prepare, score

    job = job_from_args(args)
    prepared = prepare(job)  # one-line errors (backbone width, settings) before Ray starts
    cli.init_ray(args.num_cpus)
    report = score(args.videos, args.out, job, prepared=prepared)
    for failure in report.failed:
        print(f"failed: {failure['uri']}: {failure['reason']}")
    alarms = report.alarms  # small records: no score is read back for these lines
    for alarm, _ in alarms[:20]:
        print(f"{alarm.video_id}:{format_alarm(alarm)}")
    if len(alarms) > 20:
        print(f"… {len(alarms) - 20} more in {report.written['alarms_csv']}")
    if report.video is not None:
        scores = report.video
        print(f"{scores.video_id}: {len(scores.clip_scores)} clips, max score {scores.clip_scores.max():.3f}")
    for kind, uri in report.written.items():
        print(f"wrote {kind}: {uri}")
    print(report.summary())
    return 1 if report.all_failed else 0


if __name__ == "__main__":
    cli.run(main, get_args_parser())

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
settings default to those recorded with the model's training store. Re-running the same
command resumes: videos already in OUT/scores are skipped.
"""

from __future__ import annotations

import argparse

from anomaly import cli, uris
from anomaly.alarms import (
    DEFAULT_MERGE_GAP_S,
    DEFAULT_MIN_DURATION_S,
    DEFAULT_THRESHOLD,
    AlarmSettings,
    format_alarm,
)
from anomaly.scoring.windows import DEFAULT_WINDOW_SECONDS


def get_args_parser() -> argparse.ArgumentParser:
    clips = cli.clip_flags(clip_len="as in training", stride="as in training", crop="as in training")
    parser = cli.ArgumentParser(__doc__, parents=[clips, cli.model_actor_flags()])
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
        "--threshold", type=float, default=DEFAULT_THRESHOLD, help="clip score above which an alarm starts"
    )
    parser.add_argument(
        "--min-duration",
        type=float,
        default=DEFAULT_MIN_DURATION_S,
        help="seconds; shorter alarms (after merging) are dropped",
    )
    parser.add_argument(
        "--merge-gap",
        type=float,
        default=DEFAULT_MERGE_GAP_S,
        help="seconds; alarms closer than this are one alarm",
    )
    parser.add_argument(
        "--window",
        type=float,
        default=DEFAULT_WINDOW_SECONDS,
        help="seconds of clips averaged to score each clip: about one training segment (default 2.5 s, "
        "a median UCF-Crime training segment; use the length of yours)",
    )
    parser.add_argument(
        "--window-clips", type=int, default=None, help="the window in clips (overrides --window)"
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


def job_from_args(args: argparse.Namespace, payload: dict):
    from anomaly.scoring.pipeline import ScoringJob, extraction_settings

    extraction = extraction_settings(
        payload,
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
        flush_every=args.flush_every,
        fps=args.fps_default,
        wait_for_resources=args.wait_for_resources,
    )
    return ScoringJob(
        checkpoint=args.checkpoint,
        extraction=extraction,
        alarms=AlarmSettings(args.threshold, args.min_duration, args.merge_gap),
        window_seconds=args.window,
        window_clips=args.window_clips,
    )


def _is_one_video(videos: str) -> bool:
    from anomaly.extraction import VIDEO_EXTENSIONS

    return videos.lower().endswith(VIDEO_EXTENSIONS)


def video_scores(table, video_id: str):
    """One video's :class:`~anomaly.scoring.single.VideoScores` from the clip rows in OUT/scores."""
    import pyarrow.compute as pc

    from anomaly.scoring.single import VideoScores

    rows = table.filter(pc.equal(table.column("video_id"), video_id)).sort_by("clip_index")
    first = rows.slice(0, 1).to_pylist()[0]
    clip_len = int(first["last_frame"] - first["first_frame"] + 1)
    stride = int(rows.column("first_frame")[1].as_py()) if rows.num_rows > 1 else clip_len
    return VideoScores(
        video_id=video_id,
        uri=first["source_uri"],
        fps=float(first["fps"]),
        num_frames=int(first["num_frames"]),
        stride=stride,
        clip_len=clip_len,
        clip_scores=rows.column("score").to_numpy(),
    )


def main(args: argparse.Namespace) -> int:
    from anomaly.checkpoints import load_scorer
    from anomaly.scoring import outputs
    from anomaly.scoring.pipeline import prepare, score_videos
    from anomaly.scoring.single import write_annotated_video, write_outputs

    _, payload = load_scorer(args.checkpoint)
    job = job_from_args(args, payload)
    prepared = prepare(job)  # one-line errors (backbone width, settings) before Ray starts
    cli.init_ray(args.num_cpus)
    report = score_videos(args.videos, args.out, job, prepared=prepared)
    for failure in report.failed:
        print(f"failed: {failure['uri']}: {failure['reason']}")
    alarms = report.alarms  # small records: no score is read back for these lines
    for alarm, _ in alarms[:20]:
        print(f"{alarm.video_id}:{format_alarm(alarm)}")
    if len(alarms) > 20:
        print(f"… {len(alarms) - 20} more in {report.written['alarms_csv']}")
    if _is_one_video(args.videos) and report.scored + report.skipped:
        video_id = (report.scored + report.skipped)[0]
        scores = video_scores(outputs.read_scores(args.out, [video_id]), video_id)
        report.written.update(write_outputs(scores, args.out, threshold=job.alarms.threshold))
        if args.annotated_video:
            report.written["video"] = write_annotated_video(
                scores, uris.join(args.out, f"{scores.video_id}_scored.mp4"), threshold=job.alarms.threshold
            )
        print(f"{scores.video_id}: {len(scores.clip_scores)} clips, max score {scores.clip_scores.max():.3f}")
    elif args.annotated_video:
        for video_id in sorted({alarm.video_id for alarm, _ in alarms}):
            report.written[f"video {video_id}"] = write_annotated_video(
                video_scores(outputs.read_scores(args.out, [video_id]), video_id),
                uris.join(args.out, "annotated", f"{video_id}.mp4"),
                threshold=job.alarms.threshold,
            )
    for kind, uri in report.written.items():
        print(f"wrote {kind}: {uri}")
    print(report.summary())
    return 1 if report.all_failed else 0


if __name__ == "__main__":
    cli.run(main, get_args_parser())

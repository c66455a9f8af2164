"""Score one video with a trained model: per-frame scores (CSV), a timeline PNG, alarms as time ranges.

    python -m ray_jobs.score VIDEO --checkpoint RUN_DIR [--backbone NAME --weights PATH|none] [--out DIR]

Backbone and clip settings default to those recorded with the model's training store.
"""

from __future__ import annotations

import argparse

from anomaly import cli, uris


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("video", help="video file or URI (s3://…)")
    parser.add_argument(
        "--checkpoint", required=True, help="run directory of ray_jobs.train / tune (or its model.pt)"
    )
    parser.add_argument(
        "--backbone", default=None, help="feature extractor (default: the one the model was trained on)"
    )
    parser.add_argument(
        "--weights", default=None, help="backbone weights path/URI, or 'none' for random weights"
    )
    parser.add_argument(
        "--clip-len", type=int, default=None, help="frames per clip (default: as in training)"
    )
    parser.add_argument(
        "--stride", type=int, default=None, help="frames between clip starts (default: as in training)"
    )
    parser.add_argument(
        "--crop", type=cli.int_pair, default=None, help="model input H,W (default: as in training)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--threshold", type=float, default=0.5, help="score above which a frame is an alarm")
    parser.add_argument("--out", default="scores", help="folder or URI for the CSV and PNG")
    parser.add_argument(
        "--annotated-video", action="store_true", help="also write VIDEO_scored.mp4 with the score drawn"
    )
    return parser


def format_alarms(scores, threshold: float) -> list[str]:
    lines = []
    for start, end in scores.alarms(threshold):
        peak = float(scores.frame_scores[start:end].max())
        if scores.fps:
            lines.append(
                f"  {start / scores.fps:8.2f}s – {end / scores.fps:8.2f}s  (frames {start}–{end - 1}, peak {peak:.2f})"
            )
        else:
            lines.append(f"  frames {start}–{end - 1}  (peak {peak:.2f})")
    return lines


def main(args: argparse.Namespace) -> int:
    from anomaly.scoring import score_video, write_annotated_video, write_outputs

    scores = score_video(
        args.video,
        args.checkpoint,
        backbone=args.backbone,
        weights=args.weights,
        clip_len=args.clip_len,
        stride=args.stride,
        crop=args.crop,
        device=args.device,
    )
    written = write_outputs(scores, args.out, threshold=args.threshold)
    duration = f"{scores.num_frames / scores.fps:.1f} s" if scores.fps else f"{scores.num_frames} frames"
    print(f"{scores.video_id}: {duration}, max score {scores.frame_scores.max():.3f}")
    alarms = format_alarms(scores, args.threshold)
    print(f"segments above {args.threshold}:" if alarms else f"no segment above {args.threshold}")
    for line in alarms:
        print(line)
    if args.annotated_video:
        written["video"] = write_annotated_video(
            scores, uris.join(args.out, f"{scores.video_id}_scored.mp4"), threshold=args.threshold
        )
    for kind, uri in written.items():
        print(f"wrote {kind}: {uri}")
    return 0


if __name__ == "__main__":
    cli.run(main, get_args_parser())

"""Score live camera streams with a trained model on Ray Serve: alarms while events happen.

    python -m ray_jobs.live --checkpoint RUN_DIR --out OUT [--port 8000] [--host 127.0.0.1]
        [--camera ID=URL ...] [--weights PATH|none] [--webhook URL]
        [--threshold T --min-duration S --merge-gap S] [--window S | --window-clips N]
        [--replicas MIN,MAX --num-gpus F --batch-size N] [--duration S]
    python -m ray_jobs.live --demo --out OUT      # a synthetic recording played as a camera

A camera URL is anything FFmpeg opens as a stream (rtsp://, http(s):// MPEG-TS or
.m3u8, udp://), or a local file or URI, played at its own frame rate. Cameras can be
added and removed at run time (POST/DELETE /cameras). Alarms are served on
GET /alarms and GET /alarms/stream (server-sent events), written under
OUT/alarms/ (Parquet part files), printed one line each, and POSTed to --webhook.
Binds 127.0.0.1 unless --host says otherwise. Ctrl-C stops the cameras, closes the
alarms still open and writes them. See docs/live.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
import urllib.request

from anomaly import cli

logger = logging.getLogger("ray_jobs.live")
APP_NAME = "live"


def get_args_parser() -> argparse.ArgumentParser:
    clips = cli.clip_flags(clip_len="as in training", stride="as in training", crop="as in training")
    window = cli.alarm_flags(
        window_help="seconds of past clips averaged to score each clip (the trailing window; default 2.5 s)"
    )
    parser = cli.ArgumentParser(__doc__, parents=[clips, window])
    parser.add_argument(
        "--checkpoint", default=None, help="run directory of ray_jobs.train / tune (or its model.pt)"
    )
    parser.add_argument("--out", default="live", help="folder or URI for alarm files (OUT/alarms/)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address the HTTP API binds (0.0.0.0: every interface)"
    )
    parser.add_argument("--port", type=cli.positive_int, default=8000, help="HTTP API port")
    parser.add_argument(
        "--camera", action="append", default=[], metavar="ID=URL", help="a camera to watch (repeat the flag)"
    )
    parser.add_argument(
        "--backbone", default=None, help="feature extractor (default: the one the model was trained on)"
    )
    parser.add_argument(
        "--weights", default=None, help="backbone weights path/URI, or 'none' for random weights"
    )
    parser.add_argument("--webhook", default=None, help="URL each alarm event is POSTed to (JSON)")
    parser.add_argument("--device", default="auto", help="backbone device: auto, cpu or cuda")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per backbone replica (0: CPU)")
    parser.add_argument(
        "--backbone-cpus", type=cli.positive_float, default=1.0, help="CPUs per backbone replica"
    )
    parser.add_argument(
        "--replicas",
        type=cli.concurrency,
        default=(1, 1),
        help="backbone replicas: N, or MIN,MAX to autoscale",
    )
    parser.add_argument(
        "--batch-size", type=cli.positive_int, default=16, help="most clips per backbone call"
    )
    parser.add_argument("--batch-wait", type=float, default=0.05, help="seconds a batch waits to fill")
    parser.add_argument("--reader-cpus", type=float, default=0.25, help="CPUs reserved per camera reader")
    parser.add_argument(
        "--stale-after", type=cli.positive_float, default=2.0, help="seconds without a frame: stale"
    )
    parser.add_argument(
        "--fail-after", type=cli.positive_float, default=30.0, help="seconds stale before failed"
    )
    parser.add_argument(
        "--rtsp-transport",
        choices=("tcp", "udp"),
        default=None,
        help="RTSP transport (default: UDP, then TCP)",
    )
    parser.add_argument(
        "--duration", type=cli.positive_float, default=None, help="stop after this many seconds"
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="add camera 'demo': a synthetic recording with an event, played in a loop "
        "(without --checkpoint, a toy head is fitted on synthetic video first)",
    )
    cli.add_ray_arguments(parser)
    return parser


# The scoring settings live shares with ray_jobs.score (anomaly.scoring.job.scoring_job's names).
LIVE_SCORING_PARAMETERS = (
    "backbone",
    "weights",
    "clip_len",
    "stride",
    "device",
    "window_seconds",
    "window_clips",
    "threshold",
    "min_duration_s",
    "merge_gap_s",
)


def config_from_args(args: argparse.Namespace) -> dict:
    from anomaly.live.app import parse_cameras

    low, high = args.replicas
    return {
        "checkpoint": args.checkpoint,
        "out": args.out,
        "cameras": parse_cameras(args.camera),
        # scoring's settings by their library names, through cli's one flag table
        **cli.settings_fields(args, LIVE_SCORING_PARAMETERS),
        "crop": list(args.crop) if args.crop else None,
        "webhook": args.webhook,
        "num_gpus": args.num_gpus,
        "backbone_cpus": args.backbone_cpus,
        "min_replicas": low,
        "max_replicas": high,
        "max_batch_size": args.batch_size,
        "batch_wait_s": args.batch_wait,
        "reader_cpus": args.reader_cpus,
        "stale_after_s": args.stale_after,
        "fail_after_s": args.fail_after,
        "rtsp_transport": args.rtsp_transport,
    }


def prepare_demo(args: argparse.Namespace) -> None:
    """``--demo``: a toy checkpoint (unless one was given) and the synthetic recording as camera ``demo``."""
    from anomaly import uris
    from anomaly.errors import AnomalyError
    from anomaly.live.demo import DEMO_WINDOW_CLIPS, demo_video, fit_demo_checkpoint

    if not uris.is_local(args.out):
        raise AnomalyError("--demo", "needs a local --out (the demo writes its video and toy model there)")
    folder = os.path.join(args.out, "demo")
    if args.checkpoint is None:
        if not os.path.exists(os.path.join(folder, "run", "model.pt")):
            print("fitting a toy head on synthetic video (once; about a minute on 2 CPUs)…", flush=True)
            fit_demo_checkpoint(os.path.join(folder, "run"))
        args.checkpoint = os.path.join(folder, "run")
        args.window_clips = args.window_clips or DEMO_WINDOW_CLIPS
    video = os.path.join(folder, "street.mp4")
    if not os.path.exists(video):
        demo_video(video, num_frames=320, event_frames=(160, 224), seed=7)
    args.camera = [*args.camera, f"demo={os.path.abspath(video)}"]
    print("camera demo: a 20 s street recording with an explosion at 10-14 s, played in a loop", flush=True)


def alarm_line(event: dict) -> str:
    end = event.get("end") or "open"
    return (
        f"alarm {event['event']:6s} camera={event['camera']} start={event['start']} end={end} "
        f"peak={event['peak_score']:.3f} mean={event['mean_score']:.3f}"
    )


def follow_alarms(url: str, stop: threading.Event) -> None:
    """Print one line per alarm event from the service's SSE stream, reconnecting until ``stop``."""
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=30) as stream:
                for raw in stream:
                    line = raw.decode(errors="replace").strip()
                    if line.startswith("data: "):
                        print(alarm_line(json.loads(line[6:])), flush=True)
                    if stop.is_set():
                        return
        except Exception:  # noqa: BLE001 - the printer reconnects; the service is unaffected
            stop.wait(1.0)


def wait_healthy(base: str, timeout_s: float = 120.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
                if response.status == 200:
                    return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.5)
    raise TimeoutError(f"{base}/healthz did not answer 200 within {timeout_s:.0f} s")


def main(args: argparse.Namespace) -> int:
    from ray import serve

    from anomaly.errors import AnomalyError
    from anomaly.live.app import LiveConfig, build_app, resolve

    if args.demo:
        prepare_demo(args)
    if not args.checkpoint:
        raise AnomalyError("--checkpoint", "required (or --demo for a toy model)")
    config = config_from_args(args)
    resolve(LiveConfig.from_dict(config))  # one-line errors before Ray starts
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "the HTTP API binds %s: reachable from other machines; it has no authentication", args.host
        )
    logger.info("HTTP API on %s:%d", args.host, args.port)
    cli.init_ray(args.num_cpus)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=False)
    local = (
        f"http://127.0.0.1:{args.port}"
        if args.host in ("0.0.0.0", "::")
        else f"http://{args.host}:{args.port}"
    )
    wait_healthy(local)
    print(f"serving on {local} (GET /cameras, /alarms, /alarms/stream); Ctrl-C stops", flush=True)
    stop = threading.Event()
    printer = threading.Thread(target=follow_alarms, args=(f"{local}/alarms/stream", stop), daemon=True)
    printer.start()

    def terminate(signum, frame):  # ray job stop / kill: as Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        deadline = time.time() + args.duration if args.duration else None
        while deadline is None or time.time() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping: closing open alarms and writing them…", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            cameras = serve.get_app_handle(APP_NAME).close.remote().result(timeout_s=60)
            print(f"stopped {cameras} cameras; alarms in {args.out}/alarms/", flush=True)
        finally:
            stop.set()
            serve.delete(APP_NAME)
            serve.shutdown()
    return 0


if __name__ == "__main__":
    cli.run(main, get_args_parser())

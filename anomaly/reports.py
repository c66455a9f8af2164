"""What the commands print about results: ``evaluate``'s metrics table and one video's alarm lines.

Formatting lives here, in the library, so a command never imports another command for it.
"""

from __future__ import annotations

from anomaly.alarms import DEFAULT_THRESHOLD, AlarmSettings, format_alarm


def format_alarms(scores, threshold: float = DEFAULT_THRESHOLD) -> list[str]:
    """Alarm lines of one in-process :class:`~anomaly.scoring.single.VideoScores` (the demo prints these)."""
    return [format_alarm(alarm) for alarm in scores.alarms(AlarmSettings(threshold=threshold))]


SATURATED_LINE = 0.05  # the share of scores exactly 0 or 1 from which the table shows it


def format_metrics(metrics: dict) -> str:
    def pct(value):
        return "n/a" if value is None or value != value else f"{100 * value:.2f}"

    lines = [
        f"frame AUC        {pct(metrics['frame_auc'])}   (Sultani et al. C3D: 75.41)",
        f"frame AP         {pct(metrics['frame_ap'])}",
        f"false alarms@{DEFAULT_THRESHOLD:g} {pct(metrics['false_alarm_rate'])} % of normal frames",
    ]
    if "within_video_auc" in metrics:
        lines += [
            f"within-video AUC {pct(metrics['within_video_auc'])}   (anomalous videos' own frames; 50 = chance)",
            f"video oracle     {pct(metrics['video_oracle_auc'])}   (frame AUC of a perfect video classifier here)",
        ]
    if metrics.get("saturated_share", 0.0) >= SATURATED_LINE:
        lines.append(
            f"saturated        {pct(metrics['saturated_share'])} % of segment scores are exactly 0 or 1 (ties)"
        )
    lines += [f"  AUC {name:<16s} {pct(auc)}" for name, auc in sorted(metrics["per_class_auc"].items())]
    for name, values in sorted(metrics.get("per_dataset", {}).items()):
        region = f", region AUC {pct(values['region_auc'])}" if "region_auc" in values else ""
        lines.append(f"data set {name:<16s} frame AUC {pct(values['frame_auc'])}{region}")
    if "region_level" in metrics:
        region = metrics["region_level"]
        lines.append(
            f"region level     AUC {pct(region['auc'])}, EER {pct(region['eer'])}, detection rate@{DEFAULT_THRESHOLD:g} "
            f"{pct(region['detection_rate'])} ({region['anomalous_frames']} anomalous frames, "
            f"{region['grid']}x{region['grid']} cells)"
        )
    return "\n".join(lines)

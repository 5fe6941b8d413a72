"""``magscope health``: the current figures of a running instrument, printed (no Qt).

``python -m magscope_viewer.health_report [--instance NAME] [--interval S] [--json]``
attaches read-only to the instance's shared memory (:class:`LiveSource`, as the viewer
does), reads the camera's and the tracker's counters twice ``--interval`` s apart and
prints: camera frame rate measured and set, frames acquired and late; tracking rate,
frames tracked and dropped by reason, queue, latency p50/p99; workers alive and
restarts; ring capacities. ``--json`` prints the same as one JSON object. Exit status 2
when no such instance runs (the message lists those that do).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from typing import Any

from ._live_source import Health, InstanceNotFoundError, LiveSource


def health_figures(before: Health, after: Health, seconds: float) -> dict[str, Any]:
    """The figures of two readings ``seconds`` apart: rates (1/s) from the counters'
    change, the rest as of ``after``. Counters not attached (-1) give None."""

    def rate(a: int, b: int) -> float | None:
        return None if a < 0 or b < 0 or seconds <= 0 else (b - a) / seconds

    def count(v: int) -> int | None:
        return None if v < 0 else int(v)

    def ms(v: float) -> float | None:
        return None if not math.isfinite(v) else 1e3 * v

    period = after.frame_period_s
    figures: dict[str, Any] = {
        "state": after.state,
        "owner_pid": count(after.owner_pid),
        "camera": {
            "frame_rate_hz": rate(before.frames_acquired, after.frames_acquired),
            "frame_rate_set_hz": 1.0 / period if math.isfinite(period) and period > 0 else None,
            "frames_acquired": count(after.frames_acquired),
            "frames_late": count(after.frames_late),
            "late_per_s": rate(before.frames_late, after.frames_late),
            "frame_ring_frames": count(after.frame_ring_capacity),
        },
    }
    if after.tracker_attached:
        alive = sum(w.alive for w in after.workers)
        figures["tracking"] = {
            "tracked_per_s": rate(before.frames_tracked, after.frames_tracked),
            "frames_tracked": count(after.frames_tracked),
            "frames_dropped": count(after.frames_dropped),
            "dropped_behind": count(after.dropped_behind),
            "dropped_worker": count(after.dropped_worker),
            "dropped_error": count(after.dropped_error),
            "queue_depth": count(after.queue_depth),
            "latency_p50_ms": ms(after.latency_p50_s),
            "latency_p99_ms": ms(after.latency_p99_s),
            "workers_alive": alive,
            "workers": len(after.workers),
            "worker_restarts": count(after.worker_restarts),
            "track_ring_frames": count(after.track_ring_capacity),
        }
    return figures


def _num(value: Any, fmt: str = ".1f", missing: str = "-") -> str:
    return missing if value is None else format(value, fmt)


def format_figures(instance: str, f: dict[str, Any]) -> str:
    """The figures as lines of text, units on every number."""
    cam = f["camera"]
    lines = [
        f"instance {instance!r}: {f['state']} (owner pid {_num(f['owner_pid'], 'd')})",
        f"camera    {_num(cam['frame_rate_hz'])} frames/s (set {_num(cam['frame_rate_set_hz'])}), "
        f"{_num(cam['frames_acquired'], ',')} frames acquired, {_num(cam['frames_late'], ',')} "
        f"late ({_num(cam['late_per_s'])}/s now); frame ring {_num(cam['frame_ring_frames'], ',')} frames",
    ]
    trk = f.get("tracking")
    if trk is None:
        lines.append("tracking  not running")
    else:
        lines += [
            f"tracking  {_num(trk['tracked_per_s'])} frames/s, {_num(trk['frames_tracked'], ',')} "
            f"tracked, {_num(trk['frames_dropped'], ',')} dropped (behind "
            f"{_num(trk['dropped_behind'], ',')}, worker {_num(trk['dropped_worker'], ',')}, "
            f"error {_num(trk['dropped_error'], ',')}), queue {_num(trk['queue_depth'], ',')} "
            f"frames, latency p50 {_num(trk['latency_p50_ms'])} ms / p99 "
            f"{_num(trk['latency_p99_ms'])} ms",
            f"workers   {trk['workers_alive']} of {trk['workers']} alive, "
            f"{_num(trk['worker_restarts'], ',')} restarts; track ring "
            f"{_num(trk['track_ring_frames'], ',')} frames",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="magscope health", description=__doc__.splitlines()[0])
    parser.add_argument("--instance", required=True, help="the instrument's instance name")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between the two readings the rates come from")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.interval) and 0.0 <= args.interval <= 60.0):
        parser.error(f"--interval {args.interval}: must be 0 to 60 s")
    try:
        source = LiveSource(args.instance)
    except InstanceNotFoundError as err:
        print(f"magscope health: {err}", file=sys.stderr)
        return 2
    with source:
        before = source.health()
        t0 = time.monotonic()
        time.sleep(args.interval)
        after = source.health()
        figures = health_figures(before, after, time.monotonic() - t0)
    if args.json:
        figures["workers_detail"] = [asdict(w.record) | {"alive": w.alive} for w in after.workers]
        print(json.dumps(figures, default=str))
    else:
        print(format_figures(args.instance, figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m magscope_viewer [--instance NAME]``: the live viewer in its own process.

Exit codes: 0 after the window is closed, 2 when no microscope of the instance runs
(the message lists those that do) or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ENV_INSTANCE = "MAGSCOPE_INSTANCE"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m magscope_viewer",
        description="Live view of a running MagScope microscope (read-only).",
    )
    parser.add_argument(
        "--instance", default=os.environ.get(ENV_INSTANCE) or "default",
        help="instrument instance name (default $MAGSCOPE_INSTANCE or 'default')",
    )
    parser.add_argument(
        "--wait", action="store_true",
        help="start even if the instance does not run yet, and attach when it starts",
    )
    parser.add_argument("--select", default="", help="bead ids to plot, e.g. '0-9' (default: first ten)")
    parser.add_argument("--reference", default="", help="reference bead ids, e.g. '3,12'")
    parser.add_argument(
        "--window", type=float, default=10.0, help="time span of traces and kymograph (s)"
    )
    parser.add_argument(
        "--screenshot", metavar="PNG",
        help="save the window to PNG after --after seconds and exit (no interaction)",
    )
    parser.add_argument("--after", type=float, default=3.0, help="seconds before --screenshot")
    parser.add_argument(
        "--proxy", default=None, metavar="ADDRESS",
        help="bluesky 0MQ proxy (out side) for run context, e.g. tcp://127.0.0.1:5578 "
        "(default $MAGSCOPE_PROXY_OUT or 127.0.0.1:5578)",
    )
    parser.add_argument(
        "--tiled", default=None, metavar="URI",
        help="Tiled server for the run browser (default $MAGSCOPE_TILED_URI; key from "
        "$MAGSCOPE_TILED_API_KEY)",
    )
    parser.add_argument("--run", default=None, metavar="UID", help="open this run for review")
    parser.add_argument(
        "--no-stream", action="store_true", help="no run context from the document stream"
    )
    # for benchmarks/bench_viewer.py: display rate and refresh time written at exit
    parser.add_argument("--report-json", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--quit-after", type=float, metavar="S", help=argparse.SUPPRESS)
    return parser


def save_screenshot(app, window, path: str) -> None:
    """Save ``window`` to PNG: on a real display (xcb under X or Xvfb) what the X server
    shows of it, offscreen Qt's own rendering; prints the platform used."""
    if app.platformName() == "offscreen":
        image = window.grab()
    else:
        app.processEvents()
        image = app.primaryScreen().grabWindow(int(window.winId()))
    if not image.save(path):
        raise OSError(f"cannot write the screenshot {path}")
    print(f"screenshot: {path} ({image.width()} x {image.height()} px, Qt platform "
          f"{app.platformName()})", flush=True)


def _timed_refreshes(window) -> list[tuple[float, float]]:
    """(monotonic s at the end, s taken) of every timer refresh of ``window`` from now on."""
    log: list[tuple[float, float]] = []

    def refresh() -> None:
        t0 = time.perf_counter()
        window.refresh()
        log.append((time.monotonic(), time.perf_counter() - t0))

    window.timer.timeout.disconnect()
    window.timer.timeout.connect(refresh)
    return log


def write_report(path: str, log: list[tuple[float, float]], skip_s: float = 2.0) -> None:
    """JSON of the refreshes after the first ``skip_s`` s: refreshes per second (median
    of whole 1 s windows), refresh time (ms, median and p90), their count."""
    ends = np.array([t for t, _ in log])
    took = np.array([d for _, d in log])
    keep = ends >= (ends[0] + skip_s if ends.size else 0.0)
    ends, took = ends[keep], took[keep]
    per_s = np.bincount((ends - ends[0]).astype(int))[:-1] if ends.size else np.zeros(0)
    report = {
        "refreshes": int(ends.size),
        "seconds": float(ends[-1] - ends[0]) if ends.size > 1 else 0.0,
        "display_hz_median": float(np.median(per_s)) if per_s.size else float("nan"),
        "refresh_ms_median": float(np.median(took) * 1e3) if took.size else float("nan"),
        "refresh_ms_p90": float(np.percentile(took, 90) * 1e3) if took.size else float("nan"),
    }
    with open(path, "w") as f:
        json.dump(report, f)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from magscope_viewer._live_source import InstanceNotFoundError, LiveSource
    from magscope_viewer._run_stream import default_proxy_address, normalize_address
    from magscope_viewer._window import parse_ids

    try:
        proxy = None if args.no_stream else (
            normalize_address(args.proxy) if args.proxy else default_proxy_address()
        )
    except ValueError as err:
        parser.error(str(err))

    try:
        selected = parse_ids(args.select) if args.select.strip() else None
        reference = parse_ids(args.reference)
    except ValueError:
        parser.error("--select and --reference take bead ids like '0-3,7'")
    try:
        review_only = args.run is not None  # a run to review needs no running microscope
        source = LiveSource(args.instance, require_running=not (args.wait or review_only))
    except (InstanceNotFoundError, ValueError) as err:
        print(f"magscope viewer: {err}", file=sys.stderr)
        return 2

    from PyQt5 import QtCore, QtWidgets

    from magscope_viewer._window import ViewerWindow

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    window = ViewerWindow(source, selected=selected, reference=reference, window_s=args.window)
    if proxy is not None:
        from magscope_viewer._run_panel import RunPanel

        panel = RunPanel()
        panel.start_stream(proxy)
        window.add_run_panel(panel)
    tiled = args.tiled or os.environ.get("MAGSCOPE_TILED_URI")
    if tiled or args.run:
        from magscope_viewer._run_browser import RunBrowser

        browser = RunBrowser(tiled)
        window.add_run_browser(browser)
        if args.run:
            if browser.open_uid(args.run) is None:
                print(f"magscope viewer: {browser.message.text()}", file=sys.stderr)
                window.close()
                source.close()
                return 2
        else:
            browser.search()
    window.show()
    log = _timed_refreshes(window) if args.report_json else []
    if args.quit_after:
        def quit_now() -> None:
            window.close()

        QtCore.QTimer.singleShot(int(args.quit_after * 1000), quit_now)
    if args.screenshot:
        def save() -> None:
            save_screenshot(app, window, args.screenshot)
            window.close()

        QtCore.QTimer.singleShot(int(args.after * 1000), save)
    app.exec_()
    source.close()
    if args.report_json:
        write_report(args.report_json, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())

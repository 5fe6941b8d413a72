"""The ``magscope`` command.

``magscope demo``          run the demo experiment on the simulated microscope
``magscope ipython``       IPython with the startup profile (``profile/``) loaded
``magscope tiled``         serve the embedded Tiled server in the foreground
``magscope tiled replay``  send runs that could not reach Tiled when they ran
``magscope cleanup``       remove shared memory left behind by crashed sessions
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .tiled_server import DEFAULT_PORT, ENV_DATA_DIR

ENV_PROFILE_DIR = "MAGSCOPE_PROFILE_DIR"


def profile_dir() -> Path:
    """The startup profile: ``$MAGSCOPE_PROFILE_DIR`` or ``profile/`` of this checkout."""
    if env := os.environ.get(ENV_PROFILE_DIR):
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve()
    candidate = here.parents[2] / "profile"
    if not (candidate / "startup").is_dir():
        raise SystemExit(
            f"Cannot find the startup profile next to {here}; set {ENV_PROFILE_DIR} to the "
            "project's profile/ folder."
        )
    return candidate


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.data_dir, port=args.port)
    return 0


def _cmd_ipython(args: argparse.Namespace) -> int:
    from IPython import start_ipython

    if args.data_dir:
        os.environ[ENV_DATA_DIR] = str(Path(args.data_dir).expanduser().resolve())
    argv = [f"--profile-dir={profile_dir()}", "--no-banner", *args.ipython_args]
    start_ipython(argv=argv)
    return 0


def _cmd_tiled(args: argparse.Namespace) -> int:
    if args.action == "replay":
        from .replay import replay_main

        return replay_main(args.data_dir)
    from .tiled_server import EmbeddedTiled, default_data_dir

    folder = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    return EmbeddedTiled(folder, port=args.port).run_foreground()


def _cmd_cleanup(args: argparse.Namespace) -> int:
    from magscope_tracking.shm import remove_stale_segments

    removed = remove_stale_segments()
    for seg in removed:
        print(f"removed {seg.name} ({seg.size_bytes / 1e6:.1f} MB, owner pid {seg.pid} gone)")
    print(f"{len(removed)} stale shared-memory segment(s) removed.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magscope", description="MagScope-Bluesky: magnetic tweezers on Bluesky."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def data_dir_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir",
            help=f"data folder of the embedded Tiled server (default: ${ENV_DATA_DIR} or the "
            "user data directory)",
        )

    demo = sub.add_parser("demo", help="run the demo experiment on the simulated microscope")
    data_dir_option(demo)
    demo.add_argument("--port", type=int, default=DEFAULT_PORT, help="embedded Tiled port")
    demo.set_defaults(func=_cmd_demo)

    ipy = sub.add_parser("ipython", help="IPython with the magscope profile loaded")
    data_dir_option(ipy)
    ipy.add_argument("ipython_args", nargs="*", help="passed on to IPython (e.g. -c CODE)")
    ipy.set_defaults(func=_cmd_ipython)

    tiled = sub.add_parser("tiled", help="the embedded Tiled server")
    tiled.add_argument("action", nargs="?", choices=["serve", "replay"], default="serve")
    data_dir_option(tiled)
    tiled.add_argument("--port", type=int, default=DEFAULT_PORT)
    tiled.set_defaults(func=_cmd_tiled)

    cleanup = sub.add_parser("cleanup", help="remove shared memory left by crashed sessions")
    cleanup.set_defaults(func=_cmd_cleanup)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "ipython":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.ipython_args = [*extra, *args.ipython_args]
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The ``magscope`` command.

``magscope demo``          run the demo experiment on the simulated microscope
``magscope ipython``       IPython with the startup profile (``profile/``) loaded
``magscope tiled``         serve the embedded Tiled server in the foreground
``magscope tiled replay``  send runs that could not reach Tiled when they ran
``magscope cleanup``       remove shared memory left behind by crashed sessions
``magscope qserver``       the queueserver (RE manager, Redis, proxy, Tiled) on default addresses
``magscope qserver list``  regenerate profile/startup/existing_plans_and_devices.yaml
``magscope proxy``         bluesky's 0MQ document proxy (in 127.0.0.1:5577, out :5578)
``magscope redis``         a Redis server (for a queueserver started by hand)
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

    from .qserver import ensure_proxy
    from .tiled_server import default_data_dir

    if args.data_dir:
        os.environ[ENV_DATA_DIR] = str(Path(args.data_dir).expanduser().resolve())
    ensure_proxy(default_data_dir() / "logs")  # stops when IPython exits, if we started it
    argv = [f"--profile-dir={profile_dir()}", "--no-banner", *args.ipython_args]
    start_ipython(argv=argv)
    return 0


def _cmd_tiled(args: argparse.Namespace) -> int:
    if args.action == "replay":
        from .replay import replay_main

        return replay_main(args.data_dir, port=args.port)
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


def _cmd_qserver(args: argparse.Namespace) -> int:
    from .qserver import list_plans_and_devices, run_qserver

    if args.action == "list":
        path = list_plans_and_devices(profile_dir(), args.data_dir)
        print(f"wrote {path}")
        return 0
    try:
        return run_qserver(profile_dir(), args.data_dir, port=args.port, redis_addr=args.redis_addr)
    except RuntimeError as err:  # RedisUnavailableError, a service that would not start
        print(f"magscope qserver: {err}", file=sys.stderr)
        return 2


def _cmd_proxy(args: argparse.Namespace) -> int:
    from .services import DEFAULT_PROXY_IN, DEFAULT_PROXY_OUT

    argv = [
        sys.executable, "-m", "bluesky.commandline.zmq_proxy",
        "--in-address", DEFAULT_PROXY_IN.split(":")[-1],
        "--out-address", DEFAULT_PROXY_OUT.split(":")[-1],
    ]
    print(f"0MQ proxy: RunEngines publish to {DEFAULT_PROXY_IN}, viewers read {DEFAULT_PROXY_OUT}")
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover


def _cmd_redis(args: argparse.Namespace) -> int:
    from .services import redis_server_executable

    exe = redis_server_executable()
    os.execv(exe, [exe, "--port", str(args.port), "--bind", "127.0.0.1", "--save", ""])
    return 0  # pragma: no cover


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

    qs = sub.add_parser("qserver", help="the queueserver with Redis, proxy and Tiled")
    qs.add_argument("action", nargs="?", choices=["run", "list"], default="run")
    data_dir_option(qs)
    qs.add_argument("--port", type=int, default=DEFAULT_PORT, help="embedded Tiled port")
    qs.add_argument(
        "--redis-addr", help="use this Redis (host:port) instead of starting one on 6379"
    )
    qs.set_defaults(func=_cmd_qserver)

    proxy = sub.add_parser("proxy", help="bluesky's 0MQ document proxy")
    proxy.set_defaults(func=_cmd_proxy)

    redis = sub.add_parser("redis", help="a Redis server on 127.0.0.1")
    redis.add_argument("--port", type=int, default=6379)
    redis.set_defaults(func=_cmd_redis)
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

"""The ``magscope`` command.

``magscope demo``          run the demo experiment on the simulated microscope
``magscope ipython``       IPython with the startup profile (``magscope_session/profile``) loaded
``magscope tiled``         serve the embedded Tiled server in the foreground
``magscope tiled replay``  send runs that could not reach Tiled when they ran
``magscope cleanup``       end orphaned services and remove shared memory of crashed sessions
``magscope qserver``       the queueserver (RE manager, Redis, proxy, Tiled) on default addresses
``magscope qserver list``  regenerate the profile's startup/existing_plans_and_devices.yaml
``magscope proxy``         bluesky's 0MQ document proxy (in 127.0.0.1:5577, out :5578)
``magscope redis``         a Redis server (for a queueserver started by hand)
``magscope viewer``        the Qt live viewer of a running instance (its own process)
``magscope export``        write a run's tracks to CSV or Parquet (metadata in PATH.json)
``magscope health``        the current figures of a running instrument (camera, tracking, workers)
``magscope state``         the instrument's saved state: show, export FILE, import FILE
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ._tiled_server import DEFAULT_PORT, ENV_DATA_DIR, TiledTarget

ENV_PROFILE_DIR = "MAGSCOPE_PROFILE_DIR"


def profile_dir() -> Path:
    """The startup profile: ``$MAGSCOPE_PROFILE_DIR``, else the one installed with this
    package (``magscope_session/profile``). Its ``startup/`` holds the numbered files that
    IPython and the queueserver's worker run, and the queue's plan and permission lists."""
    if env := os.environ.get(ENV_PROFILE_DIR):
        candidate = Path(env).expanduser().resolve()
    else:
        candidate = Path(__file__).resolve().with_name("profile")
    if not (candidate / "startup").is_dir():
        raise SystemExit(
            f"Cannot find the startup profile: {candidate / 'startup'} is not a folder "
            f"(${ENV_PROFILE_DIR} names a profile folder holding startup/)."
        )
    return candidate


def startup_files(profile: Path) -> list[Path]:
    """The profile's startup files in the order IPython runs them (by name)."""
    return sorted(
        p for p in (profile / "startup").iterdir() if p.suffix in (".py", ".ipy")
    )


def _use_instance(args: argparse.Namespace) -> str:
    """Export ``--instance`` as ``MAGSCOPE_INSTANCE`` (read by the profile and the demo)."""
    from magscope_devices._ownership import ENV_INSTANCE, check_instance_name, instance_from_env

    if getattr(args, "instance", None):
        check_instance_name(args.instance)
        os.environ[ENV_INSTANCE] = args.instance
    return instance_from_env()


def _use_config(args: argparse.Namespace) -> None:
    """Check ``--config`` (or ``$MAGSCOPE_CONFIG``) now, before any process starts, and
    export it as ``MAGSCOPE_CONFIG`` (read by the profile, the queue's worker, the demo)."""
    from magscope_devices import InstrumentConfigError, load_instrument_config
    from magscope_devices._instrument_config import CONFIG_ENV

    path = getattr(args, "config", None)
    if path:
        os.environ[CONFIG_ENV] = str(Path(path).expanduser().resolve())
    try:
        config = load_instrument_config()
    except InstrumentConfigError as err:
        raise SystemExit(f"magscope: {err}") from None
    if config.source:
        print(config.describe())


def _refuse_if_owned(instance: str) -> None:
    """Exit with the owner's name if another process drives ``instance``."""
    from magscope_devices._ownership import InstrumentBusyError, InstrumentLock

    try:
        with InstrumentLock(instance):
            pass
    except InstrumentBusyError as err:
        raise SystemExit(f"magscope: {err}") from None


def _start_viewer(instance: str, log_dir: Path) -> None:
    """``--viewer``: the live viewer of ``instance`` as a child of this session (its own
    process; it attaches when the microscope starts and ends when this session ends)."""
    from ._services import start_service

    log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    start_service("viewer", viewer_command(instance, ["--wait"]), log=log_dir / "viewer.log")
    print(f"Viewer: started for instance {instance!r} (log {log_dir / 'viewer.log'})")


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    _use_config(args)
    instance = _use_instance(args)
    _refuse_if_owned(instance)
    if args.viewer:
        from ._qserver import ensure_proxy
        from ._tiled_server import default_data_dir

        if args.data_dir:
            os.environ[ENV_DATA_DIR] = str(Path(args.data_dir).expanduser().resolve())
        log_dir = default_data_dir() / "logs"
        _, line = ensure_proxy(log_dir)  # the demo's runs reach the viewer's run panel
        print(line)
        _start_viewer(instance, log_dir)
    run_demo(args.data_dir, port=args.port, publish=args.viewer)
    return 0


def _cmd_ipython(args: argparse.Namespace) -> int:
    from IPython import start_ipython
    from traitlets.config import Config

    from ._qserver import ENV_QSERVER_PUBLIC_KEY, ensure_proxy
    from ._services import QSERVER_KEYS_FILENAME, qserver_keys
    from ._tiled_server import default_data_dir

    _use_config(args)
    instance = _use_instance(args)
    _refuse_if_owned(instance)
    if args.data_dir:
        os.environ[ENV_DATA_DIR] = str(Path(args.data_dir).expanduser().resolve())
    data_dir = default_data_dir()
    if ENV_QSERVER_PUBLIC_KEY not in os.environ and (data_dir / QSERVER_KEYS_FILENAME).exists():
        # REManagerAPI() in this session reaches the encrypted queueserver of this data dir
        os.environ[ENV_QSERVER_PUBLIC_KEY] = qserver_keys(data_dir)[0]
    _, line = ensure_proxy(data_dir / "logs")  # stops when IPython exits, if we started it
    print(line)
    if args.viewer:
        _start_viewer(instance, data_dir / "logs")
    # IPython keeps its history, logs and security files in a folder of the data dir (the
    # installed profile may be read-only); it runs the profile's startup files from there
    ipython_dir = data_dir / "ipython"
    ipython_dir.mkdir(parents=True, exist_ok=True)
    config = Config()
    config.InteractiveShellApp.exec_files = [str(p) for p in startup_files(profile_dir())]
    argv = [f"--profile-dir={ipython_dir}", "--no-banner", *args.ipython_args]
    start_ipython(argv=argv, config=config)
    return 0


def _cmd_tiled(args: argparse.Namespace) -> int:
    if args.action == "replay":
        from ._replay import replay_main

        return replay_main(args.data_dir, port=args.port)
    if args.action == "config":
        return _tiled_facility_config(args)
    if args.action == "access":
        return _tiled_access(args)
    if args.config:  # one server process of a facility deployment, in the foreground
        from ._tiled_server import serve_main

        serve_main([args.config, "--host", args.host, "--port", str(args.port)])
        return 0
    from ._tiled_server import EmbeddedTiled, TiledServerError, default_data_dir

    folder = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    try:
        server = EmbeddedTiled(folder, port=args.port, catalog=args.catalog, tables=args.tables,
                               streaming_cache=args.streaming_cache)
        return server.run_foreground(show_key=args.show_key)
    except (TiledServerError, ValueError) as err:
        print(f"magscope tiled: {err}", file=sys.stderr)
        return 2


def _tiled_facility_config(args: argparse.Namespace) -> int:
    from ._tiled_facility import write_facility_config

    if not args.facility or not args.data_root or not args.output:
        print("magscope tiled config: give --facility, --data-root DIR (shared by every "
              "server and instrument) and --output FILE", file=sys.stderr)
        return 2
    try:
        out = write_facility_config(args.output, args.data_root, host=args.host,
                                    access=args.access)
    except ValueError as err:
        print(f"magscope tiled config: {err}", file=sys.stderr)
        return 2
    secrets_env = ("MAGSCOPE_TILED_AUTHN, MAGSCOPE_TILED_ADMIN_PASSWORD and "
                   "MAGSCOPE_TILED_SECRET_KEY" if args.access else "TILED_SINGLE_USER_API_KEY")
    print(f"wrote {out}: serve it with `magscope tiled --config {out} --port P` after `tiled catalog init "
          "$MAGSCOPE_TILED_CATALOG` (once); each server needs MAGSCOPE_TILED_CATALOG, "
          f"MAGSCOPE_TILED_TABLES and {secrets_env} in its environment")
    return 0


def _tiled_access(args: argparse.Namespace) -> int:
    """Create the instruments' and readers' principals and keys on a lab's Tiled (run by
    an administrator once per new instrument or reader) and compile the access tags."""
    from ._tiled_access import (
        ENV_ADMIN_PASSWORD,
        add_principals,
        compile_access_tags,
        instrument_tag,
        write_keys,
    )

    password = os.environ.get(ENV_ADMIN_PASSWORD, "")
    catalog = args.catalog or os.environ.get("MAGSCOPE_TILED_CATALOG", "")
    if not args.uri or not args.keys_dir or not args.instrument or not password or not catalog:
        print("magscope tiled access: give --uri (the lab's Tiled), --keys-dir DIR, one "
              f"--instrument NAME or more (and --reader NAME), with ${ENV_ADMIN_PASSWORD} "
              "and $MAGSCOPE_TILED_CATALOG (or --catalog) set", file=sys.stderr)
        return 2
    try:
        made = add_principals(args.uri, password, instruments=args.instrument,
                              readers=args.reader or [])
        compile_access_tags(catalog, made)
        paths = write_keys(args.keys_dir, made)
    except (ValueError, PermissionError, OSError) as err:
        print(f"magscope tiled access: {err}", file=sys.stderr)
        return 2
    for p, path in zip(made, paths, strict=True):
        what = (f"writes and reads under {instrument_tag(p.name)}" if p.writes
                else "reads every instrument's runs")
        print(f"{p.name}: {what}; key in {path} (owner-only)")
    print("each instrument's session: MAGSCOPE_TILED_URI, its key as MAGSCOPE_TILED_API_KEY "
          "and MAGSCOPE_TILED_ACCESS_TAG=instrument-NAME")
    return 0


def health_command(instance: str, extra: list[str] | None = None) -> list[str]:
    """The command line that prints the health of ``instance`` (``python -m
    magscope_viewer.health_report``: it attaches to the shared memory as the viewer does)."""
    return [sys.executable, "-m", "magscope_viewer.health_report", "--instance", instance,
            *(extra or [])]


def _cmd_health(args: argparse.Namespace) -> int:
    import subprocess

    instance = _use_instance(args)
    extra = ["--interval", str(args.interval)] + (["--json"] if args.json else [])
    return subprocess.call(health_command(instance, extra))


def _tiled_for(command: str, args: argparse.Namespace) -> TiledTarget | None:
    """The Tiled server of ``args.data_dir`` (``resolve_tiled``, a running one or the
    embedded one started), or None after printing why not as ``magscope COMMAND: ...``."""
    from ._tiled_client import TiledUnreachableError
    from ._tiled_server import TiledServerError, resolve_tiled

    try:
        return resolve_tiled(args.data_dir, port=0)
    except (TiledUnreachableError, TiledServerError) as err:
        print(f"magscope {command}: {err}", file=sys.stderr)
        return None


def _cmd_export(args: argparse.Namespace) -> int:
    import time

    from ._run_export import export_tracks
    from ._run_tracks import NoTracksError

    target = _tiled_for("export", args)
    if target is None:
        return 2
    try:
        client = target.client()
        try:
            run = client[args.run_uid]
        except KeyError:
            print(f"magscope export: no run {args.run_uid!r} in Tiled at {target.uri}",
                  file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        try:
            done = export_tracks(run, args.path, stream=args.stream, overwrite=args.overwrite)
        except (NoTracksError, FileExistsError, ValueError) as err:
            print(f"magscope export: {err}", file=sys.stderr)
            return 2
        took = time.perf_counter() - t0
        print(f"wrote {done.rows:,} rows ({done.frames:,} frames x {done.beads} beads) to "
              f"{done.path} in {took:.1f} s; run metadata in {done.sidecar}")
        return 0
    finally:
        target.close()


def _cmd_reanalyse(args: argparse.Namespace) -> int:
    from ._reanalysis import reanalyse, write_reanalysis
    from .runs import find_runs

    options: dict[str, object] = {}
    for item in args.option or []:
        key, sep, text = item.partition("=")
        if not sep:
            print(f"magscope reanalyse: --option wants KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    target = _tiled_for("reanalyse", args)
    if target is None:
        return 2
    try:
        client = target.client()
        uids = list(args.run or [])
        if args.sample or args.plan_name or args.since:
            uids += [r.metadata["start"]["uid"] for r in find_runs(
                client, sample=args.sample, plan_name=args.plan_name, since=args.since)
                if "video" in list(r)]
        if not uids:
            print("magscope reanalyse: no run to re-analyse (give --run UID, or --sample, "
                  "--plan-name, --since to find runs recorded with ROI crops)", file=sys.stderr)
            return 2
        from tqdm import tqdm

        bar = tqdm(total=None, unit="chunk", desc="re-tracking", file=sys.stderr)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            results = reanalyse(target.uri, uids, zlut_run=args.zlut_run, options=options,
                                api_key=target.api_key, chunk_rows=args.chunk_rows,
                                scheduler=args.scheduler, workers=args.workers,
                                serial=args.serial, progress=progress,
                                read_from=args.read_from)
        except (ValueError, TypeError, KeyError) as err:
            print(f"magscope reanalyse: {err}", file=sys.stderr)
            return 2
        finally:
            bar.close()
        from ._document_writer import SpoolingTiledWriter
        from ._recalibration import recalibration_of, write_recalibration
        from .runs import force_calibration_of, zlut_of

        writer = SpoolingTiledWriter(target.uri, target.api_key, target.spool_dir)
        zlut = None
        for result in results:
            new = write_reanalysis(writer, result)
            print(f"run {result.source_run} re-tracked ({result.frame_index.size} rows x "
                  f"{result.bead_ids.size} beads): new run {new}")
            source = client[result.source_run]
            if source.metadata["start"].get("plan_name") != "force_calibration":
                continue
            zlut = zlut if zlut is not None else zlut_of(client[args.zlut_run])
            try:
                rec = recalibration_of(source, result, zlut)
            except ValueError as err:
                print(f"  its force calibration is not recomputed: {err}", file=sys.stderr)
                continue
            was = force_calibration_of(source)
            cal_uid = write_recalibration(writer, rec)
            print(f"  force calibration recomputed: F(z) f0 = {rec.calibration.f0_pn:.3f} "
                  f"+/- {rec.fit['f0_pn_err']:.3f} pN (was {was.f0_pn:.3f} pN), "
                  f"l1 = {rec.calibration.l1_mm:.3f} mm, l2 = {rec.calibration.l2_mm:.3f} "
                  f"mm: new run {cal_uid}")
        return 0 if writer.close(timeout=120) and not writer.unsent_runs() else 1
    finally:
        target.close()


def _cmd_cleanup(args: argparse.Namespace) -> int:
    from magscope_ipc.processes import end_processes, find_orphans
    from magscope_ipc.shm import remove_stale_segments

    orphans = find_orphans()
    described = {}
    for proc in orphans:
        try:
            described[proc.pid] = " ".join(proc.cmdline())[:120]
        except Exception:
            described[proc.pid] = "?"
    ended = end_processes(orphans)
    for proc in ended:
        print(f"ended orphaned process {proc.pid} ({described.get(proc.pid, '?')})")
    print(f"{len(ended)} orphaned process(es) of earlier sessions ended.")
    removed = remove_stale_segments()
    for seg in removed:
        print(f"removed {seg.name} ({seg.size_bytes / 1e6:.1f} MB, owner pid {seg.pid} gone)")
    print(f"{len(removed)} stale shared-memory segment(s) removed.")
    return 0


def _cmd_qserver(args: argparse.Namespace) -> int:
    from ._qserver import list_plans_and_devices, run_qserver

    if args.action == "list":
        path = list_plans_and_devices(profile_dir(), args.data_dir)
        print(f"wrote {path}")
        return 0
    _use_config(args)
    _use_instance(args)
    try:
        return run_qserver(profile_dir(), args.data_dir, port=args.port, redis_addr=args.redis_addr)
    except RuntimeError as err:  # an address taken, no Redis, a service that would not start
        print(f"magscope qserver: {err}", file=sys.stderr)
        return 2


def _exec_service(name: str, argv: list[str], addresses: list[tuple[str, int]]) -> int:
    """Replace this process by a service after checking its addresses are free."""
    from magscope_ipc.processes import AddressInUseError, require_free_port

    try:
        for host, port in addresses:
            require_free_port(name, host, port)
    except AddressInUseError as err:
        print(f"magscope: {err}", file=sys.stderr)
        return 2
    os.umask(0o077)
    os.execv(argv[0], argv)
    return 0  # pragma: no cover


def _cmd_proxy(args: argparse.Namespace) -> int:
    from ._services import DEFAULT_PROXY_IN, DEFAULT_PROXY_OUT

    in_port, out_port = (int(a.rsplit(":", 1)[1]) for a in (DEFAULT_PROXY_IN, DEFAULT_PROXY_OUT))
    argv = [
        sys.executable, "-m", "bluesky.commandline.zmq_proxy",
        "--in-address", f"tcp://{args.host}:{in_port}",
        "--out-address", f"tcp://{args.host}:{out_port}",
    ]
    print(
        f"0MQ proxy: RunEngines publish to {args.host}:{in_port}, viewers read "
        f"{args.host}:{out_port}. Documents on it are pickled: bind only to networks "
        "whose every host you trust.", flush=True,
    )
    return _exec_service(
        "The 0MQ document proxy", argv, [(args.host, in_port), (args.host, out_port)]
    )


def _cmd_redis(args: argparse.Namespace) -> int:
    from ._services import redis_server_executable

    exe = redis_server_executable()
    argv = [exe, "--port", str(args.port), "--bind", "127.0.0.1", "--save", "",
            "--protected-mode", "yes"]
    return _exec_service("Redis", argv, [("127.0.0.1", args.port)])


def viewer_command(instance: str, extra: list[str] | None = None) -> list[str]:
    """The command line that starts the live viewer of ``instance`` in its own process
    (``python -m magscope_viewer``; this package never imports the viewer)."""
    return [sys.executable, "-m", "magscope_viewer", "--instance", instance, *(extra or [])]


def _cmd_viewer(args: argparse.Namespace) -> int:
    import subprocess

    instance = _use_instance(args)
    try:
        return subprocess.call(viewer_command(instance, args.viewer_args))
    except KeyboardInterrupt:
        return 130


def _cmd_state(args: argparse.Namespace) -> int:
    from ._instrument_state import (
        InstrumentStateError,
        copy_state_file,
        describe_state,
        read_state_file,
        state_path,
    )
    from ._tiled_server import default_data_dir

    instance = _use_instance(args)
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    path = state_path(data_dir, instance)
    try:
        if args.action == "show":
            if not path.exists():
                print(f"no state saved yet for instance {instance!r} ({path})")
                return 0
            state = read_state_file(path)
            print(f"{path} (saved {state.get('saved', '?')}): {describe_state(state)}")
            print(path.read_text(), end="")
            return 0
        if args.file is None:
            print(f"magscope state {args.action}: give the FILE", file=sys.stderr)
            return 2
        if args.action == "export":
            copy_state_file(path, Path(args.file), overwrite=args.overwrite)
            print(f"wrote {args.file} from {path}")
            return 0
        _refuse_if_owned(instance)  # a running session would save over the imported file
        previous = copy_state_file(Path(args.file), path, overwrite=True, keep_previous=True)
        kept = f"; the previous state is in {previous}" if previous else ""
        print(f"instance {instance!r} starts from {args.file} next time ({path}){kept}")
        return 0
    except (InstrumentStateError, FileExistsError, FileNotFoundError) as err:
        print(f"magscope state {args.action}: {err}", file=sys.stderr)
        return 2


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

    def instance_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--instance",
            help="instrument instance name (default $MAGSCOPE_INSTANCE or 'default'): one "
            "process owns an instance; another name gives a separate simulated instrument",
        )

    def config_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config", metavar="FILE",
            help="instrument config (YAML: the backend of camera, magnets and focus; "
            "default $MAGSCOPE_CONFIG, else the simulated microscope); see docs/hardware.md",
        )

    def viewer_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--viewer", action="store_true",
            help="open the live viewer too (its own process, closed with this session)",
        )

    demo = sub.add_parser("demo", help="run the demo experiment on the simulated microscope")
    data_dir_option(demo)
    demo.add_argument("--port", type=int, default=DEFAULT_PORT, help="embedded Tiled port")
    instance_option(demo)
    config_option(demo)
    viewer_option(demo)
    demo.set_defaults(func=_cmd_demo)

    ipy = sub.add_parser("ipython", help="IPython with the magscope profile loaded")
    data_dir_option(ipy)
    instance_option(ipy)
    config_option(ipy)
    viewer_option(ipy)
    ipy.add_argument("ipython_args", nargs="*", help="passed on to IPython (e.g. -c CODE)")
    ipy.set_defaults(func=_cmd_ipython)

    tiled = sub.add_parser("tiled", help="the embedded Tiled server")
    tiled.add_argument("action", nargs="?", choices=["serve", "replay", "config", "access"],
                       default="serve")
    data_dir_option(tiled)
    tiled.add_argument("--port", type=int, default=DEFAULT_PORT)
    tiled.add_argument(
        "--show-key", action="store_true", help="print the API key (kept out of logs otherwise)"
    )
    tiled.add_argument(
        "--catalog", default=None, metavar="URI",
        help="a PostgreSQL catalog, postgresql://USER:PASSWORD@HOST:PORT/DB (default "
             "$MAGSCOPE_TILED_CATALOG, else SQLite files in the data dir)",
    )
    tiled.add_argument(
        "--tables", default=None, metavar="URI",
        help="PostgreSQL database for the runs' event tables (default: the catalog's)",
    )
    tiled.add_argument(
        "--streaming-cache", default=None, metavar="URI",
        help="Redis for live data to subscribers (runs.watch_live), redis://HOST:PORT "
             "(default $MAGSCOPE_TILED_STREAMING_CACHE; none: no live data)",
    )
    tiled.add_argument("--facility", action="store_true",
                       help="config: a lab deployment (PostgreSQL, several servers)")
    tiled.add_argument("--access", action="store_true",
                       help="config: a key per instrument and access tags (no single key)")
    tiled.add_argument("--uri", default=None,
                       help="access: the lab's Tiled server, e.g. http://tiled.lab:8000")
    tiled.add_argument("--instrument", action="append", metavar="NAME",
                       help="access: an instrument to create a key and tag for (repeat)")
    tiled.add_argument("--reader", action="append", metavar="NAME",
                       help="access: a read-only key for every instrument's runs (repeat)")
    tiled.add_argument("--keys-dir", default=None, metavar="DIR",
                       help="access: where the keys go, one owner-only file each")
    tiled.add_argument("--data-root", default=None, metavar="DIR",
                       help="config: the shared folder of detector files")
    tiled.add_argument("--host", default="127.0.0.1",
                       help="config: the interface the servers bind (default 127.0.0.1)")
    tiled.add_argument("--output", "-o", default=None, metavar="FILE",
                       help="config: where to write it")
    tiled.add_argument("--config", default=None, metavar="FILE",
                       help="serve this Tiled config (a facility config) in the foreground, "
                            "its API key from $TILED_SINGLE_USER_API_KEY (never printed)")
    tiled.set_defaults(func=_cmd_tiled)

    cleanup = sub.add_parser(
        "cleanup", help="end orphaned services, remove shared memory left by crashed sessions"
    )
    cleanup.set_defaults(func=_cmd_cleanup)

    qs = sub.add_parser("qserver", help="the queueserver with Redis, proxy and Tiled")
    qs.add_argument("action", nargs="?", choices=["run", "list"], default="run")
    data_dir_option(qs)
    config_option(qs)
    qs.add_argument("--port", type=int, default=DEFAULT_PORT, help="embedded Tiled port")
    qs.add_argument(
        "--redis-addr", help="use this Redis (host:port) instead of starting one on 6379"
    )
    instance_option(qs)
    qs.set_defaults(func=_cmd_qserver)

    proxy = sub.add_parser("proxy", help="bluesky's 0MQ document proxy")
    proxy.add_argument(
        "--host", default="127.0.0.1",
        help="interface to bind (default 127.0.0.1: this computer only)",
    )
    proxy.set_defaults(func=_cmd_proxy)

    redis = sub.add_parser("redis", help="a Redis server on 127.0.0.1")
    redis.add_argument("--port", type=int, default=6379)
    redis.set_defaults(func=_cmd_redis)

    viewer = sub.add_parser(
        "viewer",
        help="the Qt live viewer of a running instance (read-only; further options such "
        "as --select 0-9, --reference 3, --window 10, --wait go to python -m magscope_viewer)",
    )
    instance_option(viewer)
    viewer.set_defaults(func=_cmd_viewer, viewer_args=[])

    export = sub.add_parser(
        "export",
        help="write a run's tracks (time, frame, bead, x, y, z, extension, force) to CSV or "
        "Parquet, the run's metadata in PATH.json; Tiled: $MAGSCOPE_TILED_URI, else the "
        "embedded server of --data-dir (started for the export if it is not running)",
    )
    export.add_argument("run_uid", help="the run's uid (its start document's uid)")
    export.add_argument("path", help="the file to write: NAME.csv or NAME.parquet")
    export.add_argument("--stream", help="the stream to read (default: tracks, else primary)")
    export.add_argument("--overwrite", action="store_true", help="replace PATH if it exists")
    data_dir_option(export)
    export.set_defaults(func=_cmd_export)

    rean = sub.add_parser(
        "reanalyse",
        help="re-track the ROI crops (or whole frames) of past runs with a Z-LUT and "
        "tracking options on Dask (a LocalCluster, or --scheduler), and recompute the force "
        "calibration of a force_calibration run; the results go to Tiled as new runs",
    )
    rean.add_argument("--run", action="append", metavar="UID", help="a run (repeat)")
    rean.add_argument("--sample", help="runs of this sample (with ROI crops)")
    rean.add_argument("--plan-name", help="runs of this plan")
    rean.add_argument("--since", help="runs started since (YYYY-MM-DD)")
    rean.add_argument("--zlut-run", required=True, metavar="UID",
                      help="the run whose Z-LUT to track with")
    rean.add_argument("--option", action="append", metavar="KEY=VALUE",
                      help="a tracking option (TrackOptions), e.g. min_xy_score=0.3 (repeat)")
    rean.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                      help="a running Dask scheduler (default $MAGSCOPE_DASK_SCHEDULER, else "
                           "a LocalCluster of --workers processes)")
    rean.add_argument("--workers", type=int, default=2, help="LocalCluster workers (default 2)")
    rean.add_argument("--chunk-rows", type=int, default=50,
                      help="video rows per task (default 50)")
    rean.add_argument("--serial", action="store_true", help="in this process, no Dask")
    rean.add_argument("--read-from", choices=("auto", "files", "tiled"), default="auto",
                      help="where the images are read: the runs' HDF5 files at the path "
                           "the Tiled server has them (a shared filesystem), through "
                           "Tiled, or auto: files where readable (default)")
    data_dir_option(rean)
    rean.set_defaults(func=_cmd_reanalyse)

    health = sub.add_parser(
        "health", help="the current figures of a running instrument: camera frame rate and "
        "late frames, frames tracked and dropped by reason, latency p50/p99, workers",
    )
    instance_option(health)
    health.add_argument("--interval", type=float, default=1.0,
                        help="seconds between the two readings the rates come from (default 1)")
    health.add_argument("--json", action="store_true", help="one JSON object instead of text")
    health.set_defaults(func=_cmd_health)

    state = sub.add_parser(
        "state", help="the instrument's saved state (beads, Z-LUT and force calibration runs, "
        "camera, tracking and lock settings): show it, export it to FILE, or import FILE "
        "as the state the next session starts from (refused while a session runs)",
    )
    state.add_argument("action", choices=("show", "export", "import"))
    state.add_argument("file", nargs="?", help="the YAML file to write (export) or read (import)")
    state.add_argument("--overwrite", action="store_true", help="export: replace FILE")
    instance_option(state)
    data_dir_option(state)
    state.set_defaults(func=_cmd_state)
    return parser


def main(argv: list[str] | None = None) -> int:
    # data files (catalog, tables, spool, detector HDF5, logs) are the owner's only
    os.umask(0o077)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command == "viewer":
            args.viewer_args = extra
        elif args.command != "ipython":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        else:
            args.ipython_args = [*extra, *args.ipython_args]
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

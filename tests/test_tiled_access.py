"""Who sees what in a lab's shared Tiled, against the real thing: PostgreSQL, a Tiled server
process with Tiled's tag-based access policy, service principals and their API keys, and
runs written by the session's spooling writer with their instrument's tag."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import bluesky.plans as bp
import httpx
import pytest
from bluesky import RunEngine
from ophyd_async.core import StandardReadable, init_devices, soft_signal_rw

from magscope_ipc.processes import free_port
from magscope_session._document_writer import SpoolingTiledWriter
from magscope_session._postgres import PostgresServer
from magscope_session._setup import subscribe_tiled_writer
from magscope_session._tiled_access import (
    Principal,
    add_principals,
    instrument_tag,
)
from magscope_session._tiled_facility import write_facility_config
from magscope_session._tiled_server import TiledTarget

pytestmark = pytest.mark.system

MAGSCOPE = str(Path(sys.executable).with_name("magscope"))


class Dev(StandardReadable):
    def __init__(self, name: str = "") -> None:
        with self.add_children_as_readables():
            self.value = soft_signal_rw(float, 1.5)
        super().__init__(name=name)


def _write_run(uri: str, key: str, spool: Path, tag: str | None, sample: str) -> str:
    """One run through the session's spooling writer; returns its uid (raises if the
    server refused any of it)."""
    RE = RunEngine({})
    with init_devices():
        dev = Dev()
    writer = SpoolingTiledWriter(uri, key, spool, batch_size=5)
    RE.subscribe(writer)
    md = {"sample": sample} | ({"tiled_access_tags": [tag]} if tag else {})
    (uid,) = RE(bp.count([dev], num=4), **md)
    assert writer.close(timeout=60)
    if writer.unsent_runs():
        raise RuntimeError(f"the run {uid} was not accepted (it stays in the spool)")
    return uid


def _serve(config: Path, env: dict, log: Path):
    from magscope_ipc.processes import spawn
    port = free_port()
    proc = spawn("Tiled", [MAGSCOPE, "tiled", "--config", str(config), "--port", str(port)],
                 env=env, log=log)

    def answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/v1/", timeout=1.0).status_code in (
                200, 401)
        except httpx.HTTPError:
            return False

    proc.wait_until(answers, 90.0, f"answer on port {port}")
    return proc, f"http://127.0.0.1:{port}"


def test_an_instrument_key_sees_and_writes_only_its_own_runs(tmp_path, monkeypatch, caplog):
    from tiled.client import from_uri

    from magscope_session._tiled_server import tiled_executable

    config = write_facility_config(tmp_path / "tiled.yml", tmp_path / "shared", access=True)
    text = config.read_text()
    assert "TagBasedAccessPolicy" in text and "single_user_api_key" not in text
    assert "${MAGSCOPE_TILED_ADMIN_PASSWORD}" in text and '"127.0.0.1"' in text

    pg = PostgresServer(tmp_path / "pg", durable=False).start()
    proc = None
    try:
        admin_password = secrets.token_urlsafe(24)
        env = dict(os.environ, PGPASSWORD=pg.password,
                   MAGSCOPE_TILED_CATALOG=pg.uri("catalog", password=False),
                   MAGSCOPE_TILED_TABLES=pg.uri("tables"),
                   MAGSCOPE_TILED_AUTHN=pg.uri("authn", driver="asyncpg", password=False),
                   MAGSCOPE_TILED_ADMIN_PASSWORD=admin_password,
                   MAGSCOPE_TILED_SECRET_KEY=secrets.token_hex(32))
        env.pop("TILED_SINGLE_USER_API_KEY", None)
        init = subprocess.run([str(tiled_executable()), "catalog", "init",
                               pg.uri("catalog", driver="asyncpg", password=False)],
                              capture_output=True, text=True, timeout=120, env=env)
        assert init.returncode == 0, init.stderr[-2000:]
        proc, uri = _serve(config, env, tmp_path / "tiled.log")

        with pytest.raises(PermissionError, match="refused the administrator's login"):
            add_principals(uri, "not-the-password", instruments=["a"])
        # the administrator's command: principals, keys (owner-only files), tags
        cli = subprocess.run(
            [MAGSCOPE, "tiled", "access", "--uri", uri, "--instrument", "a", "--instrument",
             "b", "--reader", "viewer", "--keys-dir", str(tmp_path / "keys")],
            capture_output=True, text=True, timeout=120, env=env)
        assert cli.returncode == 0, cli.stderr[-3000:]
        assert "a: writes and reads under instrument-a" in cli.stdout, cli.stdout
        keys = sorted((tmp_path / "keys").glob("*.json"))
        assert [k.name for k in keys] == ["a.json", "b.json", "viewer.json"]
        assert all(oct(k.stat().st_mode & 0o777) == "0o600" for k in keys)
        made = {k.stem: json.loads(k.read_text()) for k in keys}
        a, b, viewer = (Principal(n, made[n]["uuid"], made[n]["api_key"], made[n]["writes"])
                        for n in ("a", "b", "viewer"))
        assert not any(p.api_key in cli.stdout + cli.stderr for p in (a, b, viewer))
        assert a.api_key not in repr(a)

        # each instrument writes a run under its own tag
        run_a = _write_run(uri, a.api_key, tmp_path / "spool-a", instrument_tag("a"), "A")
        run_b = _write_run(uri, b.api_key, tmp_path / "spool-b", instrument_tag("b"), "B")

        # A's key reads A's run, and does not see B's (not listed, not by uid)
        client_a = from_uri(uri, api_key=a.api_key)
        assert list(client_a) == [run_a]
        assert list(client_a[run_a]["primary"].read()["dev-value"]) == [1.5] * 4
        with pytest.raises(KeyError):
            client_a[run_b]
        client_b = from_uri(uri, api_key=b.api_key)
        assert list(client_b) == [run_b]

        # A's key cannot put a run under B's tag, nor write into B's run
        caplog.clear()
        with pytest.raises(RuntimeError, match="not accepted"):
            _write_run(uri, a.api_key, tmp_path / "spool-a2", instrument_tag("b"), "A as B")
        assert "403: Access policy rejects the provided access tags" in caplog.text
        as_a = {"Authorization": f"Apikey {a.api_key}"}
        assert httpx.get(f"{uri}/api/v1/metadata/{run_b}", headers=as_a).status_code == 404
        refused = httpx.put(f"{uri}/api/v1/metadata/{run_b}", headers=as_a,
                            json={"metadata": {"start": {"sample": "changed by A"}}})
        assert refused.status_code in (401, 403, 404), refused.text
        # (and B's own key could: the refusal is A's, not the request's)
        md_b = dict(from_uri(uri, api_key=b.api_key)[run_b].metadata)
        with_b = httpx.put(f"{uri}/api/v1/metadata/{run_b}",
                           headers={"Authorization": f"Apikey {b.api_key}"},
                           json={"metadata": {**md_b, "note": "checked by B"}})
        assert with_b.status_code == 200, with_b.text
        assert from_uri(uri, api_key=b.api_key)[run_b].metadata["start"]["sample"] == "B"

        # the viewer's key reads both instruments' runs and writes nothing
        client_v = from_uri(uri, api_key=viewer.api_key)
        assert sorted(client_v) == sorted([run_a, run_b])
        caplog.clear()
        with pytest.raises(RuntimeError, match="not accepted"):
            _write_run(uri, viewer.api_key, tmp_path / "spool-v", instrument_tag("a"), "V")
        assert "401: Not enough permissions" in caplog.text
        assert sorted(from_uri(uri, api_key=viewer.api_key)) == sorted([run_a, run_b])

        # without a key: nothing
        assert httpx.get(f"{uri}/api/v1/search/").status_code == 401

        # the session tags its runs from $MAGSCOPE_TILED_ACCESS_TAG
        monkeypatch.setenv("MAGSCOPE_TILED_ACCESS_TAG", instrument_tag("a"))
        RE = RunEngine({})
        target = TiledTarget(uri=uri, api_key=a.api_key, source="env",
                             data_dir=tmp_path / "session-a")
        writer = subscribe_tiled_writer(RE, target)
        assert RE.md["tiled_access_tags"] == ["instrument-a"]
        with init_devices():
            dev = Dev()
        (run_a2,) = RE(bp.count([dev], num=2), sample="session A")
        assert writer.close(timeout=60) and writer.unsent_runs() == 0
        assert sorted(from_uri(uri, api_key=a.api_key)) == sorted([run_a, run_a2])
        assert run_a2 not in list(from_uri(uri, api_key=b.api_key))

        log = (tmp_path / "tiled.log").read_text()
        for secret in (admin_password, pg.password, a.api_key, b.api_key, viewer.api_key):
            assert secret not in log
    finally:
        if proc is not None:
            proc.stop()
        pg.remove()


def test_principal_names_are_checked():
    with pytest.raises(ValueError, match="lower-case letters"):
        instrument_tag("Bad Name")
    with pytest.raises(ValueError, match="distinct"):
        add_principals("http://127.0.0.1:9", "x", instruments=["a"], readers=["a"])
    assert "secret" not in repr(Principal("a", "u", "secret", True))

"""Who sees what in a lab's shared Tiled: one key per instrument, read-only keys, and runs
tagged by instrument (Tiled's tag-based access policy).

The pieces, all Tiled's own:

- **The server** runs with an authentication database (PostgreSQL, shared by the
  lab's server processes), one administrator account (``admin``, password from
  ``$MAGSCOPE_TILED_ADMIN_PASSWORD``) and ``TagBasedAccessPolicy``
  (:func:`access_sections` gives the config sections; ``magscope tiled config
  --facility --access`` writes them).
- **Instruments and readers** are Tiled *service principals*, one per instrument and one
  per reader (a viewer, an analyst); :func:`add_principals` creates them, each with an
  API key: an instrument's key may write, a reader's key only reads.
- **Access tags**, one per instrument (``instrument-NAME``): its own principal writes and
  reads under it and owns it; every reader reads under it. :func:`compile_access_tags`
  writes the tag definitions into the catalog database, where the servers read them.
- **Runs are tagged from their start document**: the session puts
  ``tiled_access_tags: ["instrument-NAME"]`` in its RunEngine's metadata
  (``$MAGSCOPE_TILED_ACCESS_TAG``), and bluesky-tiled-plugins' writer tags the run and
  everything in it. A run of instrument A is then invisible to B's key, and B's key
  cannot tag a run as A's.

Keys are returned to the caller, and written only to owner-only files by the command
line; they are never printed or logged.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "ADMIN_USER",
    "ENV_ACCESS_TAG",
    "ENV_ADMIN_PASSWORD",
    "ENV_AUTHN",
    "ENV_SECRET_KEY",
    "PROVIDER",
    "Principal",
    "access_sections",
    "add_principals",
    "admin_token",
    "compile_access_tags",
    "instrument_tag",
]

ENV_ADMIN_PASSWORD = "MAGSCOPE_TILED_ADMIN_PASSWORD"
ENV_SECRET_KEY = "MAGSCOPE_TILED_SECRET_KEY"
ENV_AUTHN = "MAGSCOPE_TILED_AUTHN"
#: the access tag a session puts on its runs (the instrument's tag)
ENV_ACCESS_TAG = "MAGSCOPE_TILED_ACCESS_TAG"
#: Tiled's name of the login provider of the administrator account
PROVIDER = "local"
ADMIN_USER = "admin"

WRITER_SCOPES = ["read:metadata", "read:data", "write:metadata", "write:data", "create:node"]
READER_SCOPES = ["read:metadata", "read:data"]
#: the catalog's root: instruments add runs to it, readers list it
LAB_TAG = "magscope-lab"
ROOT_SCOPES = ["read:metadata", "write:metadata", "create:node"]
#: what the catalog tree's ``args`` gain for :func:`access_sections`
ROOT_TREE_ARGS = {"top_level_access_tags": [LAB_TAG]}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def instrument_tag(name: str) -> str:
    """The access tag of instrument ``name`` (lower-case letters, digits, ``-``, ``_``)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"an instrument or reader name is 1-63 lower-case letters, digits, "
                         f"'-' or '_', starting with a letter or digit; got {name!r}")
    return f"instrument-{name}"


def access_sections(authn_uri: str = "${" + ENV_AUTHN + "}") -> dict[str, Any]:
    """The ``authentication``, ``database`` and ``access_control`` sections of a Tiled
    server config with per-instrument access; secrets stay in the environment
    (``$MAGSCOPE_TILED_ADMIN_PASSWORD``, ``$MAGSCOPE_TILED_SECRET_KEY``, and the
    authentication database's URI ``$MAGSCOPE_TILED_AUTHN``). The catalog tree also
    needs ``top_level_access_tags: [LAB_TAG]`` (:data:`ROOT_TREE_ARGS`): the policy asks
    the root for the scopes to add a run and to list runs."""
    return {
        "authentication": {
            # one administrator account, to create the instruments' principals and keys
            # (a lab with its own accounts adds its PAM or OIDC provider here)
            "providers": [{
                "provider": PROVIDER,
                "authenticator": "tiled.authenticators:DictionaryAuthenticator",
                "args": {"users_to_passwords": {ADMIN_USER: "${" + ENV_ADMIN_PASSWORD + "}"}},
            }],
            "tiled_admins": [{"provider": PROVIDER, "id": ADMIN_USER}],
            "secret_keys": ["${" + ENV_SECRET_KEY + "}"],
            "allow_anonymous_access": False,
        },
        "database": {"uri": authn_uri, "init_if_not_exists": True},
        "access_control": {
            "access_policy": "tiled.access_control.access_policies:TagBasedAccessPolicy",
            "args": {
                "provider": PROVIDER,
                "access_tags_parser": "tiled.access_control.access_tags:AccessTagsParser",
            },
        },
    }


def admin_token(uri: str, password: str, *, timeout_s: float = 10.0) -> str:
    """An access token of the administrator account (OAuth2 password login)."""
    response = httpx.post(f"{uri}/api/v1/auth/provider/{PROVIDER}/token",
                          data={"username": ADMIN_USER, "password": password},
                          timeout=timeout_s)
    if response.status_code != 200:
        raise PermissionError(f"the Tiled server at {uri} refused the administrator's "
                              f"login (HTTP {response.status_code})")
    return str(response.json()["access_token"])


@dataclass(frozen=True)
class Principal:
    """A service principal of the lab's Tiled: an instrument (writes its own runs) or a
    reader (reads every instrument's runs)."""

    name: str
    uuid: str
    api_key: str
    writes: bool

    def __repr__(self) -> str:  # the key stays out of reprs and logs
        return f"Principal(name={self.name!r}, uuid={self.uuid!r}, writes={self.writes})"


def add_principals(uri: str, admin_password: str, *, instruments: list[str],
                   readers: Sequence[str] = (), timeout_s: float = 10.0) -> list[Principal]:
    """Create a service principal and an API key for each instrument (scopes to read and
    write) and each reader (read only). Names as :func:`instrument_tag`."""
    for name in [*instruments, *readers]:
        instrument_tag(name)  # checks the name
    readers = list(readers)
    if len(set(instruments) | set(readers)) != len(instruments) + len(readers):
        raise ValueError(f"names must be distinct: instruments {instruments}, "
                         f"readers {list(readers)}")
    headers = {"Authorization": f"Bearer {admin_token(uri, admin_password)}"}
    made = []
    with httpx.Client(base_url=f"{uri}/api/v1", headers=headers, timeout=timeout_s) as http:
        for name, writes in [*((n, True) for n in instruments), *((n, False) for n in readers)]:
            response = http.post("/auth/principal", params={"role": "user"})
            response.raise_for_status()
            uuid = str(response.json()["uuid"])
            response = http.post(f"/auth/principal/{uuid}/apikey", json={
                "scopes": WRITER_SCOPES if writes else READER_SCOPES,
                "access_tags": None, "expires_in": None,
                "note": f"magscope {'instrument' if writes else 'reader'} {name}",
            })
            response.raise_for_status()
            made.append(Principal(name, uuid, str(response.json()["secret"]), writes))
    return made


def tag_config(principals: list[Principal]) -> dict[str, Any]:
    """Tiled's tag definitions: ``instrument-NAME`` for every instrument, written and
    owned by its principal, read by every reader."""
    readers = [p for p in principals if not p.writes]
    tags, owners = {}, {}
    for p in principals:
        if p.writes:
            tag = instrument_tag(p.name)
            tags[tag] = {"users": [{"name": p.uuid, "role": "writer"},
                                   *({"name": r.uuid, "role": "reader"} for r in readers)]}
            owners[tag] = {"users": [{"name": p.uuid}]}
    tags[LAB_TAG] = {"users": [{"name": p.uuid, "role": "root-writer" if p.writes else "reader"}
                               for p in principals]}
    return {
        "roles": {"writer": {"scopes": WRITER_SCOPES}, "reader": {"scopes": READER_SCOPES},
                  "root-writer": {"scopes": ROOT_SCOPES}},
        "tags": tags,
        "tag_owners": owners,
    }


def compile_access_tags(catalog_uri: str, principals: list[Principal]) -> None:
    """Write :func:`tag_config` of ``principals`` into the catalog database, where every
    Tiled server of the lab reads it (takes effect at once; replaces earlier tags)."""
    from tiled.access_control.access_tags import AccessTagsCompiler
    from tiled.access_control.scopes import ALL_SCOPES
    from tiled.server.settings import DatabaseSettings
    from tiled.utils import ensure_specified_sql_driver

    def no_groups(name: str) -> list[str]:
        raise KeyError(name)

    async def run() -> None:
        settings = DatabaseSettings(uri=ensure_specified_sql_driver(catalog_uri))
        compiler = AccessTagsCompiler(ALL_SCOPES, tag_config(principals), settings, no_groups)
        compiler.load_tag_config()
        await compiler.compile()
        from tiled.server.connection_pool import close_database_connection_pool

        await close_database_connection_pool(settings)

    asyncio.run(run())


def write_keys(folder: str | os.PathLike, principals: list[Principal]) -> list[Path]:
    """Each principal's key in ``folder/NAME.json`` (name, uuid, key, writes), owner-only."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = []
    for p in principals:
        path = out / f"{p.name}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"name": p.name, "uuid": p.uuid, "api_key": p.api_key,
                       "writes": p.writes, "access_tag": instrument_tag(p.name) if p.writes
                       else None}, f, indent=2)
        paths.append(path)
    return paths

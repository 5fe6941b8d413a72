"""The one way this project makes a Tiled client: :func:`connect`.

Everything that needs a Tiled client (the document writer, replay, :mod:`.runs`, the
embedded server's ``client()``) goes through :func:`connect`, which first checks,
without retries, that the server answers (:func:`check_reachable`): a server that is
down fails in a couple of seconds with :class:`TiledUnreachableError` naming the URI,
instead of after the Tiled client's ~25 s of retries (tiled 0.2: ``TILED_RETRY_ATTEMPTS``
and ``TILED_RETRY_TIMEOUT``, read when tiled is imported). Reading a run::

    from magscope_session import connect

    client = connect("http://127.0.0.1:8000", api_key=key)
    run = client[uid]
    run["primary"]["x"].read()
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

import httpx

ENV_TILED_URI = "MAGSCOPE_TILED_URI"
ENV_TILED_API_KEY = "MAGSCOPE_TILED_API_KEY"
#: The embedded server keeps its API key in this file of its data directory.
API_KEY_FILENAME = "tiled-api-key"

__all__ = [
    "TiledUnreachableError",
    "check_reachable",
    "client_base_uri",
    "connect",
    "default_api_key",
]


class TiledUnreachableError(RuntimeError):
    """The Tiled server does not answer (or rejects the API key)."""


def default_api_key(api_key: str | None = None) -> str | None:
    """``api_key`` if given, else ``$MAGSCOPE_TILED_API_KEY`` (None when unset or empty)."""
    if api_key is not None:
        return api_key
    return os.environ.get(ENV_TILED_API_KEY) or None


def _auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Apikey {api_key}"} if api_key else {}


def check_reachable(uri: str, api_key: str | None = None, timeout: float = 5.0) -> None:
    """Check, without retries, that a Tiled server answers at ``uri`` and accepts the key.

    Parameters
    ----------
    uri
        Server address, e.g. ``http://127.0.0.1:8000``.
    api_key
        The API key, or None for a public server.
    timeout
        Time budget for the check, in s.

    Raises
    ------
    TiledUnreachableError
        Naming the URI that failed and what to run to fix it.
    """
    base = uri.rstrip("/")
    hint = (
        "Start the embedded server with `magscope tiled`, or, if you meant to use another "
        f"server, fix the environment variable {ENV_TILED_URI} (currently "
        f"{os.environ.get(ENV_TILED_URI, 'unset')!r}) and {ENV_TILED_API_KEY}."
    )
    try:
        response = httpx.get(
            f"{base}/api/v1/metadata/",
            headers=_auth_headers(api_key),
            timeout=timeout,
            trust_env=False,
        )
    except httpx.HTTPError as err:
        raise TiledUnreachableError(
            f"No Tiled server answers at {uri} ({type(err).__name__}: {err}). {hint}"
        ) from err
    if response.status_code in (401, 403):
        raise TiledUnreachableError(
            f"The Tiled server at {uri} rejected the API key (HTTP {response.status_code}). "
            f"Set {ENV_TILED_API_KEY} to the key of that server (the embedded server keeps "
            f"its key in <data dir>/{API_KEY_FILENAME})."
        )
    if response.status_code != 200:
        raise TiledUnreachableError(
            f"The server at {uri} answered HTTP {response.status_code} to a Tiled metadata "
            f"request; is it a Tiled server? {hint}"
        )


def connect(
    client_or_uri: Any, api_key: str | None = None, *, timeout: float = 5.0, **kwargs: Any
) -> Any:
    """The Tiled client of ``client_or_uri``.

    Parameters
    ----------
    client_or_uri
        A Tiled client node (returned as it is), an object with a ``client()`` method
        (:class:`~magscope_session._tiled_server.TiledTarget`,
        :class:`~magscope_session._tiled_server.EmbeddedTiled`), or the URI of a Tiled
        server or of a node in it, e.g. ``"http://127.0.0.1:8000"``.
    api_key
        API key for a URI; default the environment variable ``MAGSCOPE_TILED_API_KEY``
        (none if unset). Ignored for a client.
    timeout
        Time (s) to wait for the server to answer before giving up.
    kwargs
        Passed on to ``tiled.client.from_uri`` (for a URI).

    Raises
    ------
    TiledUnreachableError
        No Tiled server answers at the URI within ``timeout`` s, or it rejects the key;
        the message names the URI.
    ValueError
        The string is not an ``http(s)://host[:port]...`` URI.
    """
    from tiled.client.base import BaseClient

    if isinstance(client_or_uri, BaseClient):
        return client_or_uri
    if isinstance(client_or_uri, str):
        uri = client_or_uri.strip()
        parsed = urlparse(uri)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(
                f"{client_or_uri!r} is not the URI of a Tiled server; expected e.g. "
                "'http://127.0.0.1:8000'"
            )
        key = default_api_key(api_key)
        root = f"{parsed.scheme}://{parsed.netloc}"
        try:
            check_reachable(root, key, timeout=timeout)
        except TiledUnreachableError as err:
            if root != uri.rstrip("/"):
                raise TiledUnreachableError(f"Cannot connect to {uri}: {err}") from err
            raise
        from tiled.client import from_uri

        return from_uri(uri, api_key=key, **kwargs)
    make_client = getattr(client_or_uri, "client", None)
    if callable(make_client):
        return make_client(**kwargs)
    raise TypeError(
        f"expected a Tiled client or a URI string, got {type(client_or_uri).__name__}"
    )


def client_base_uri(client: Any) -> tuple[str, str | None]:
    """``http://host:port`` and API key of a Tiled client (for :func:`check_reachable`)."""
    api_uri = str(client.context.api_uri)
    return api_uri.split("/api/v1")[0], client.context.api_key

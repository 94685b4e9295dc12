"""Test helpers: a synchronous HTTP client for an in-process app, with its lifespan run like a server would.

Starlette's TestClient warns (and ``filterwarnings = error`` turns that into a failure), so this is the same
idea in a few lines: an anyio blocking portal runs the app's lifespan and an ``httpx.AsyncClient`` over
``ASGITransport`` in a background event loop; tests call it synchronously. Everything goes through real HTTP
semantics (routing, middlewares, serialisation); nothing is mocked.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI

from service.model.features import FeatureSpec

__all__ = ["AppClient", "app_client", "default_spec", "free_port", "record"]

BASE_URL = "http://testserver"


@functools.cache
def default_spec() -> FeatureSpec:
    """The feature specification of the shipped default bundle (the model the tests serve unless told otherwise)."""
    from service.model.store import load_bundle

    return load_bundle().spec


def record(**changes: Any) -> dict[str, Any]:
    """The default bundle's example patient, with ``changes`` applied (``None`` values kept)."""
    from service.schemas import example_record

    return {**example_record(default_spec()), **changes}


class AppClient:
    """Synchronous facade of an ``httpx.AsyncClient`` bound to an ASGI app through a blocking portal."""

    def __init__(self, portal: BlockingPortal, client: httpx.AsyncClient) -> None:
        self._portal = portal
        self._client = client

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._portal.call(lambda: self._client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


@contextmanager
def app_client(
    app: FastAPI, *, lifespan: bool = True, client: tuple[str, int] = ("127.0.0.1", 50000)
) -> Iterator[AppClient]:
    """Run ``app`` (its lifespan too, unless ``lifespan=False``) and yield a synchronous client for it."""
    with ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal())
        if lifespan:
            cm: AbstractContextManager[Any] = portal.wrap_async_context_manager(app.router.lifespan_context(app))
            stack.enter_context(cm)
        transport = httpx.ASGITransport(app=app, client=client)
        async_client = httpx.AsyncClient(transport=transport, base_url=BASE_URL)
        stack.callback(lambda: portal.call(async_client.aclose))
        yield AppClient(portal, async_client)


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

"""A typed Python client of the gshap-service API: :class:`GshapClient` (sync) and :class:`AsyncGshapClient`.

Requests and answers are the service's own pydantic models (:mod:`service.schemas`), so a client and a server
of the same version agree on every field and every answer arrives validated::

    with GshapClient("http://127.0.0.1:8000", api_key="key-2026-a") as client:
        explanation = client.explain(example_record())      # ExplanationPublic
        print(explanation.prediction.probability, explanation.summary)

Records are :class:`~service.schemas.PatientRecord` objects or plain mappings keyed by feature name; a mapping
is sent as it is and validated by the server, whose refusal arrives as :class:`InvalidInput` naming the fields.

Retries: an answer 503 (model not ready) or 429 (rate limited), and a failure to connect or a connection lost
before an answer, are retried up to ``Retry.max_attempts`` attempts in all, with exponential back-off and full
jitter, never earlier than the server's ``Retry-After``. Every endpoint is free of side effects, so a retried
POST cannot do anything twice. A read timeout is not retried: the server is busy with the request already.

Errors::

    GshapError                 base of everything this module raises
     ├── TransportError        no HTTP answer (connection refused or lost, timeout), after the retries
     ├── ResponseError         an answer that breaks the API's contract (e.g. a 200 that fails its schema)
     └── ApiError              an HTTP error answer: .status, .problem (the problem+json body as a dict)
          ├── InvalidInput     400 or 422: .errors names each field and the rule it breaks
          ├── Unauthorized     401: API key missing or wrong
          ├── NotFound         404: no such route or outcome group
          ├── RateLimited      429: .retry_after (seconds) when the retries are used up
          └── Unavailable      503: .retry_after (seconds) when the retries are used up

httpx exceptions are translated to these in one place (:func:`_map_transport_errors`) and chained with
``from``. This module imports no web framework.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from service import __version__
from service.contract import Output
from service.contract import ServedMethod as Method
from service.schemas import (
    ExplanationBatchPublic,
    ExplanationPublic,
    GroupPublic,
    GroupsPublic,
    HealthPublic,
    ModelCardPublic,
    PatientRecord,
    PredictionBatchPublic,
    PredictionPublic,
    ProblemFieldError,
    ReadinessPublic,
)

__all__ = [
    "ApiError",
    "AsyncGshapClient",
    "GshapClient",
    "GshapError",
    "InvalidInput",
    "NotFound",
    "RateLimited",
    "RecordLike",
    "ResponseError",
    "Retry",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "parse_retry_after",
]

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = f"gshap-client/{__version__}"

RecordLike = PatientRecord | Mapping[str, Any]
"""A patient record: a validated :class:`PatientRecord`, or a mapping keyed by feature name (sent as is)."""
M = TypeVar("M", bound=BaseModel)


# ---- errors ------------------------------------------------------------------------------------------------


class GshapError(Exception):
    """Base of every error this client raises."""


class TransportError(GshapError):
    """No HTTP answer: the connection was refused, lost or timed out (after the retries, where retried)."""

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class ResponseError(GshapError):
    """An answer that breaks the API's contract: a success whose body fails the response schema."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class ApiError(GshapError):
    """An HTTP error answer, with its RFC 9457 problem document.

    ``problem`` is the body as a dict (``type``, ``title``, ``status``, ``detail``, ``instance``, ``errors``,
    ``request_id`` and any extension such as ``limit``); when the body is not a problem document, a minimal one
    is made up from the status line so that the attributes below are always there.
    """

    def __init__(self, status: int, problem: Mapping[str, Any], *, retry_after: float | None = None) -> None:
        self.status = status
        self.problem: dict[str, Any] = dict(problem)
        self.retry_after = retry_after
        super().__init__(f"{status} {self.title}: {self.detail}")

    @property
    def type(self) -> str:
        return str(self.problem.get("type", "about:blank"))

    @property
    def title(self) -> str:
        return str(self.problem.get("title", ""))

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail", ""))

    @property
    def request_id(self) -> str | None:
        rid = self.problem.get("request_id")
        return rid if isinstance(rid, str) else None

    @property
    def errors(self) -> list[ProblemFieldError]:
        """The broken rules, each naming its field (empty for problems that are not about the input)."""
        raw = self.problem.get("errors")
        if not isinstance(raw, list):
            return []
        out: list[ProblemFieldError] = []
        for item in raw:
            try:
                out.append(ProblemFieldError.model_validate(item))
            except ValidationError:
                continue
        return out

    @property
    def fields(self) -> list[str]:
        """The names of the offending fields, in the problem's order."""
        return [e.field for e in self.errors]


class InvalidInput(ApiError):  # noqa: N818 (named like the server's problem kinds in service/errors.py)
    """400 (body not JSON) or 422 (a field breaks the request schema); see :attr:`ApiError.errors`."""


class Unauthorized(ApiError):  # noqa: N818 (named like the server's problem kinds in service/errors.py)
    """401: the server requires an API key and none, or a wrong one, was sent."""


class NotFound(ApiError):  # noqa: N818 (named like the server's problem kinds in service/errors.py)
    """404: no such route, or no such outcome group."""


class RateLimited(ApiError):  # noqa: N818 (named like the server's problem kinds in service/errors.py)
    """429: too many requests for this key; :attr:`ApiError.retry_after` says when to come back."""


class Unavailable(ApiError):  # noqa: N818 (named like the server's problem kinds in service/errors.py)
    """503: the model is loading or the server shutting down; :attr:`ApiError.retry_after` says when to retry."""


_ERRORS: dict[int, type[ApiError]] = {
    400: InvalidInput,
    401: Unauthorized,
    404: NotFound,
    422: InvalidInput,
    429: RateLimited,
    503: Unavailable,
}

# Failures where the request cannot have been answered, or whose answer was lost with the connection.
_RETRIED_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.NetworkError, httpx.RemoteProtocolError)


@contextmanager
def _map_transport_errors(method: str, path: str, attempts: int) -> Iterator[None]:
    """THE boundary where httpx's exceptions become this module's (chained with ``from``)."""
    try:
        yield
    except httpx.TransportError as exc:
        tries = f"{attempts} attempt" + ("s" if attempts != 1 else "")
        raise TransportError(
            f"{method} {path}: no answer after {tries} ({type(exc).__name__}: {exc})", attempts=attempts
        ) from exc


# ---- the retry policy --------------------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3); None if absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now()).total_seconds())


@dataclass(frozen=True)
class Retry:
    """When and how long to wait before trying a request again.

    Attempt ``n`` (1-based) that failed is followed by a pause of ``uniform(0, min(max_backoff, backoff·2^(n-1)))``
    seconds ("full jitter"), or, when the server sent ``Retry-After: s``, of ``s + uniform(0, backoff)``: never
    earlier than the server asked, and spread so that many clients do not return at once. A ``Retry-After``
    longer than ``max_retry_after`` is not waited for: the error is raised at once, carrying ``retry_after``.
    """

    max_attempts: int = 4
    """Attempts in all, the first included (1: never retry)."""
    backoff: float = 0.25
    """Upper bound of the first pause, in seconds; doubles with each attempt."""
    max_backoff: float = 8.0
    """Cap of the back-off bound, in seconds."""
    max_retry_after: float = 30.0
    """Longest ``Retry-After`` the client waits for, in seconds."""
    statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 503}))
    """Statuses retried."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff < 0 or self.max_backoff < 0 or self.max_retry_after < 0:
            raise ValueError("back-off bounds must not be negative")

    def pause(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        if retry_after is not None:
            return retry_after + rng.uniform(0.0, self.backoff)
        bound = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return rng.uniform(0.0, bound)


NO_RETRY = Retry(max_attempts=1)


# ---- what the two clients share: requests, decisions and parsing, without I/O ------------------------------


@dataclass(frozen=True)
class _Call(Generic[M]):
    """One API call: the HTTP request and the model of its successful answer."""

    method: Literal["GET", "POST"]
    path: str
    answer: type[M]
    body: dict[str, Any] | None = None
    retry: bool = True


_ROOT_ONLY = frozenset({"/healthz", "/readyz"})


def _model_prefix(model: str | None, version: str | None) -> str:
    """The path prefix of a model's routes: ``/models/NAME``, ``/models/NAME/versions/VERSION``, or none (the
    server's default model on the root routes)."""
    if model is None:
        if version is not None:
            raise ValueError("a version needs its model: GshapClient(url, model=NAME, version=VERSION)")
        return ""
    prefix = f"/models/{quote(model, safe='')}"
    return prefix if version is None else f"{prefix}/versions/{quote(version, safe='')}"


def _routed(call: _Call[M], prefix: str) -> _Call[M]:
    """``call`` sent to the chosen model's routes (health and readiness stay the server's)."""
    if not prefix or call.path in _ROOT_ONLY:
        return call
    return dataclasses.replace(call, path=prefix + call.path)


def _record(record: RecordLike) -> dict[str, Any]:
    if isinstance(record, BaseModel):
        # unset fields are left out: the server then applies its own rule ("not measured" for optional ones)
        return record.model_dump(mode="json", exclude_unset=True)
    return dict(record)


def _options(method: Method | None, output: Output | None, n_samples: int | None, seed: int | None) -> dict[str, Any]:
    given = {"method": method, "output": output, "n_samples": n_samples, "seed": seed}
    return {k: v for k, v in given.items() if v is not None}


class _Calls:
    """The API's endpoints as :class:`_Call` objects; both clients send exactly these."""

    @staticmethod
    def predict(record: RecordLike) -> _Call[PredictionPublic]:
        return _Call("POST", "/predict", PredictionPublic, _record(record))

    @staticmethod
    def explain(record: RecordLike, options: dict[str, Any]) -> _Call[ExplanationPublic]:
        return _Call("POST", "/explain", ExplanationPublic, {**_record(record), **options})

    @staticmethod
    def predict_batch(records: Sequence[RecordLike]) -> _Call[PredictionBatchPublic]:
        return _Call("POST", "/predict/batch", PredictionBatchPublic, {"records": [_record(r) for r in records]})

    @staticmethod
    def explain_batch(records: Sequence[RecordLike], options: dict[str, Any]) -> _Call[ExplanationBatchPublic]:
        body = {"records": [_record(r) for r in records], **options}
        return _Call("POST", "/explain/batch", ExplanationBatchPublic, body)

    @staticmethod
    def groups() -> _Call[GroupsPublic]:
        return _Call("GET", "/groups", GroupsPublic)

    @staticmethod
    def group(name: str) -> _Call[GroupPublic]:
        return _Call("GET", f"/groups/{quote(name, safe='')}", GroupPublic)

    @staticmethod
    def model() -> _Call[ModelCardPublic]:
        return _Call("GET", "/model", ModelCardPublic)

    @staticmethod
    def health() -> _Call[HealthPublic]:
        return _Call("GET", "/healthz", HealthPublic, retry=False)

    @staticmethod
    def ready() -> _Call[ReadinessPublic]:
        # a readiness probe reports the present state: a 503 is the answer, not something to wait out
        return _Call("GET", "/readyz", ReadinessPublic, retry=False)


def _encode(body: dict[str, Any] | None) -> bytes | None:
    if body is None:
        return None
    try:
        return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
    except ValueError as exc:
        # NaN/Infinity are not JSON; a value that is not measured is None (null)
        raise ValueError(f"the request cannot be sent as JSON: {exc}; use None for a value not measured") from exc


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    return {"type": "about:blank", "title": response.reason_phrase, "status": response.status_code, "detail": ""}


def _api_error(response: httpx.Response) -> ApiError:
    kind = _ERRORS.get(response.status_code, ApiError)
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    return kind(response.status_code, _problem(response), retry_after=retry_after)


def _parse(call: _Call[M], response: httpx.Response) -> M:
    if response.is_success:
        try:
            return call.answer.model_validate_json(response.content)
        except ValidationError as exc:
            raise ResponseError(
                f"{call.method} {call.path}: the {response.status_code} answer does not match "
                f"{call.answer.__name__}: {exc.error_count()} error(s)",
                status=response.status_code,
            ) from exc
    raise _api_error(response)


class _Session:
    """Retry decisions of one logical call; the clients do the I/O and the sleeping."""

    def __init__(self, policy: Retry, rng: random.Random, retry: bool) -> None:
        self.policy = policy if retry else NO_RETRY
        self.rng = rng
        self.attempt = 0

    def after_response(self, response: httpx.Response) -> float | None:
        """None: the response is final. Otherwise the pause before the next attempt."""
        if response.status_code not in self.policy.statuses or self.attempt >= self.policy.max_attempts:
            return None
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is not None and retry_after > self.policy.max_retry_after:
            return None
        return self.policy.pause(self.attempt, retry_after, self.rng)

    def after_error(self, exc: httpx.TransportError) -> float:
        """The pause before the next attempt; re-raises ``exc`` if it is final."""
        if not isinstance(exc, _RETRIED_TRANSPORT_ERRORS) or self.attempt >= self.policy.max_attempts:
            raise exc
        return self.policy.pause(self.attempt, None, self.rng)


def _headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = {"Accept": "application/json, application/problem+json", "User-Agent": USER_AGENT}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    headers.update(extra or {})
    return headers


def _timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    if isinstance(timeout, httpx.Timeout):
        return timeout
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ValueError("timeout must be a positive number of seconds (or None: wait forever)")
    return httpx.Timeout(timeout)


# ---- the clients -------------------------------------------------------------------------------------------


class GshapClient:
    """Blocking client. Use as a context manager, or call :meth:`close`.

    Args:
        base_url: the service's root URL, e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer <key>`` (needed when the server sets GSHAP_API_KEYS).
        timeout: seconds for each of connect, read, write and pool; an ``httpx.Timeout`` for finer control.
        retry: the retry policy (:class:`Retry`); ``Retry(max_attempts=1)`` turns retries off.
        headers: extra headers on every request (e.g. ``X-Request-ID``).
        transport: an httpx transport, e.g. for tests or a proxy.
        sleep: how to wait between attempts (tests record the pauses instead).
        rng: the random source of the jitter (seeded in tests).
        model: the served model to ask (``/models/NAME/...``); None: the server's default model (the root routes).
        version: that model's version (``/models/NAME/versions/VERSION/...``); None: its default version.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = 30.0,
        retry: Retry | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        model: str | None = None,
        version: str | None = None,
    ) -> None:
        self.retry = retry or Retry()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._prefix = _model_prefix(model, version)
        self.chosen_model = (model, version)  # the model (and version) asked, None: the server default
        self._http = httpx.Client(
            base_url=base_url, timeout=_timeout(timeout), headers=_headers(api_key, headers), transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: _Call[M]) -> M:
        call = _routed(call, self._prefix)
        content = _encode(call.body)
        headers = {"Content-Type": "application/json"} if content is not None else None
        session = _Session(self.retry, self._rng, call.retry)
        while True:
            session.attempt += 1
            with _map_transport_errors(call.method, call.path, session.attempt):
                try:
                    response = self._http.request(call.method, call.path, content=content, headers=headers)
                except httpx.TransportError as exc:
                    pause = session.after_error(exc)
                else:
                    retry_in = session.after_response(response)
                    if retry_in is None:
                        return _parse(call, response)
                    pause = retry_in
            self._sleep(pause)

    def predict(self, record: RecordLike) -> PredictionPublic:
        """``POST /predict``: one patient's probability, label, imputed features and warnings."""
        return self._run(_Calls.predict(record))

    def explain(
        self,
        record: RecordLike,
        *,
        method: Method | None = None,
        output: Output | None = None,
        n_samples: int | None = None,
        seed: int | None = None,
    ) -> ExplanationPublic:
        """``POST /explain``: the prediction and its GradientSHAP attributions; unset options: server defaults."""
        return self._run(_Calls.explain(record, _options(method, output, n_samples, seed)))

    def predict_batch(self, records: Sequence[RecordLike]) -> PredictionBatchPublic:
        """``POST /predict/batch``: one result per record, in order; a refused record carries its problem."""
        return self._run(_Calls.predict_batch(records))

    def explain_batch(
        self,
        records: Sequence[RecordLike],
        *,
        method: Method | None = None,
        output: Output | None = None,
        n_samples: int | None = None,
        seed: int | None = None,
    ) -> ExplanationBatchPublic:
        """``POST /explain/batch``: one explanation per record, in order, all with the same options."""
        return self._run(_Calls.explain_batch(records, _options(method, output, n_samples, seed)))

    def groups(self) -> GroupsPublic:
        """``GET /groups``: mean explanations of the evaluation set by outcome group (TP, TN, FP, FN, ALL)."""
        return self._run(_Calls.groups())

    def group(self, name: str) -> GroupPublic:
        """``GET /groups/{name}``: one outcome group's summary; :class:`NotFound` for an unknown group."""
        return self._run(_Calls.group(name))

    def model(self) -> ModelCardPublic:
        """``GET /model``: the model card (features, metrics, threshold, training, limits)."""
        return self._run(_Calls.model())

    def health(self) -> HealthPublic:
        """``GET /healthz``: liveness; not retried."""
        return self._run(_Calls.health())

    def ready(self) -> ReadinessPublic:
        """``GET /readyz``: readiness; not retried, so :class:`Unavailable` means "not ready now"."""
        return self._run(_Calls.ready())


class AsyncGshapClient:
    """Asynchronous client, the same methods as :class:`GshapClient` as coroutines; ``async with``, or
    :meth:`aclose`. Arguments as for :class:`GshapClient` (``transport`` an ``httpx.AsyncBaseTransport``,
    ``sleep`` a coroutine function)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = 30.0,
        retry: Retry | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        model: str | None = None,
        version: str | None = None,
    ) -> None:
        self.retry = retry or Retry()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._prefix = _model_prefix(model, version)
        self.chosen_model = (model, version)  # the model (and version) asked, None: the server default
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=_timeout(timeout), headers=_headers(api_key, headers), transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: _Call[M]) -> M:
        call = _routed(call, self._prefix)
        content = _encode(call.body)
        headers = {"Content-Type": "application/json"} if content is not None else None
        session = _Session(self.retry, self._rng, call.retry)
        while True:
            session.attempt += 1
            with _map_transport_errors(call.method, call.path, session.attempt):
                try:
                    response = await self._http.request(call.method, call.path, content=content, headers=headers)
                except httpx.TransportError as exc:
                    pause = session.after_error(exc)
                else:
                    retry_in = session.after_response(response)
                    if retry_in is None:
                        return _parse(call, response)
                    pause = retry_in
            await self._sleep(pause)

    async def predict(self, record: RecordLike) -> PredictionPublic:
        """``POST /predict``: one patient's probability, label, imputed features and warnings."""
        return await self._run(_Calls.predict(record))

    async def explain(
        self,
        record: RecordLike,
        *,
        method: Method | None = None,
        output: Output | None = None,
        n_samples: int | None = None,
        seed: int | None = None,
    ) -> ExplanationPublic:
        """``POST /explain``: the prediction and its GradientSHAP attributions; unset options: server defaults."""
        return await self._run(_Calls.explain(record, _options(method, output, n_samples, seed)))

    async def predict_batch(self, records: Sequence[RecordLike]) -> PredictionBatchPublic:
        """``POST /predict/batch``: one result per record, in order; a refused record carries its problem."""
        return await self._run(_Calls.predict_batch(records))

    async def explain_batch(
        self,
        records: Sequence[RecordLike],
        *,
        method: Method | None = None,
        output: Output | None = None,
        n_samples: int | None = None,
        seed: int | None = None,
    ) -> ExplanationBatchPublic:
        """``POST /explain/batch``: one explanation per record, in order, all with the same options."""
        return await self._run(_Calls.explain_batch(records, _options(method, output, n_samples, seed)))

    async def groups(self) -> GroupsPublic:
        """``GET /groups``: mean explanations of the evaluation set by outcome group (TP, TN, FP, FN, ALL)."""
        return await self._run(_Calls.groups())

    async def group(self, name: str) -> GroupPublic:
        """``GET /groups/{name}``: one outcome group's summary; :class:`NotFound` for an unknown group."""
        return await self._run(_Calls.group(name))

    async def model(self) -> ModelCardPublic:
        """``GET /model``: the model card (features, metrics, threshold, training, limits)."""
        return await self._run(_Calls.model())

    async def health(self) -> HealthPublic:
        """``GET /healthz``: liveness; not retried."""
        return await self._run(_Calls.health())

    async def ready(self) -> ReadinessPublic:
        """``GET /readyz``: readiness; not retried, so :class:`Unavailable` means "not ready now"."""
        return await self._run(_Calls.ready())

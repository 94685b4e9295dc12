"""Several bundles served at once, and the store re-read without a restart.

A :class:`ModelRegistry` holds one started :class:`~service.runtime.inference.InferenceRuntime` per served model
version, and which version of each model (and which model of the store) is the default. Requests look a runtime
up (:meth:`ModelRegistry.lookup`) and hold a lease on it (:meth:`ModelRegistry.lease`) while they use it.

:meth:`ModelRegistry.reload` re-reads the store (the plan is made again: new versions, removed ones, a changed
``DEFAULT``) and swaps the served set in one assignment on the event loop:

- a version whose files did not change (same ``SHA256SUMS`` and ``SIGNATURE`` bytes) keeps its runtime;
- a new or changed one is loaded, verified (checksums, signature when keys are trusted, the request schema) and
  warmed up *before* the swap; if that fails it is refused (a log line, ``gshap_model_bundle_refusals_total``) and
  the runtime served before, if any, stays;
- a removed or replaced runtime leaves the lookup table at the swap and is closed once the requests holding a
  lease on it have finished: a request in flight finishes on the model it started on.

Only one reload runs at a time; a reload asked for while one runs is served by the next. No web framework here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from service.model.repository import StorePlan
from service.model.signing import TrustedKeys, check_signature
from service.model.store import CHECKSUMS, Bundle, BundleError, load_bundle
from service.observe.metrics import Telemetry
from service.runtime.inference import InferenceRuntime

__all__ = [
    "ModelRegistry",
    "ReloadReport",
    "ServedVersion",
    "UnknownModel",
    "load_trusted",
    "store_identity",
]

logger = logging.getLogger("gshap")


class UnknownModel(LookupError):  # noqa: N818 (a lookup that found nothing, like KeyError)
    """No served model (or version of it) by that name; ``known`` lists what is served."""

    def __init__(self, message: str, known: list[str]) -> None:
        super().__init__(message)
        self.known = known


def store_identity(folder: Path) -> bytes:
    """What identifies a bundle's content: the bytes of its ``SHA256SUMS`` and ``SIGNATURE`` (absent: empty)."""
    parts = []
    for name in (CHECKSUMS, "SIGNATURE"):
        try:
            parts.append((folder / name).read_bytes())
        except OSError:
            parts.append(b"")
    return b"\0".join(parts)


def load_trusted(folder: Path, trusted: TrustedKeys | None) -> Bundle:
    """Load and verify a bundle, and its signature: refused (:class:`BundleError`, one line naming the bundle and
    why) when the signature does not verify, or when ``trusted`` holds keys and none of them signed it. The
    bundle's ``signed_by`` and ``signing_key`` name the key."""
    try:
        sums = (folder / CHECKSUMS).read_bytes()
    except OSError:
        sums = None  # load_bundle says what is missing
    signature = check_signature(folder, trusted, sums) if sums is not None else None
    bundle = load_bundle(folder)
    if sums is not None and (folder / CHECKSUMS).read_bytes() != sums:
        raise BundleError(f"model bundle {folder}: {CHECKSUMS} changed while it was loaded; reload again")
    if signature is not None:
        bundle.signed_by = signature.key
        bundle.signing_key = signature.public_key
    return bundle


@dataclass
class ServedVersion:
    """One loaded model version: its runtime, its files' identity and when it was loaded."""

    runtime: InferenceRuntime
    identity: bytes
    path: Path
    loaded_at: float = field(default_factory=time.time)
    leases: int = 0


@dataclass(frozen=True)
class ServedSet:
    """What is served, swapped whole at a reload: ``models[name][version]``, each model's default version and
    the default model."""

    models: dict[str, dict[str, ServedVersion]]
    defaults: dict[str, str]
    default_model: str


@dataclass
class ReloadReport:
    """What a reload did: versions added, replaced (new files), removed and kept; bundles refused with the
    reason; the default versions and default model after it."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)
    default_model: str = ""
    seconds: float = 0.0

    @property
    def outcome(self) -> str:
        return "partial" if self.refused else "ok"


RuntimeFactory = Callable[[Bundle], InferenceRuntime]


class ModelRegistry:
    """The served model versions. ``plan`` says what to serve (called at start and at each reload), ``build``
    makes a runtime for a bundle (not started), ``check`` refuses a bundle the service cannot serve (raises
    :class:`BundleError`), ``trusted``: the keys a signature must come from (None or empty: any, or none)."""

    def __init__(
        self,
        plan: Callable[[], StorePlan],
        build: RuntimeFactory,
        *,
        trusted: TrustedKeys | None = None,
        check: Callable[[Bundle], None] | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.plan = plan
        self.build = build
        self.trusted = trusted
        self.check = check
        self.telemetry = telemetry
        self.served: ServedSet | None = None
        self.generation = 0
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self.on_change: list[Callable[[ModelRegistry], None]] = []
        self.last_report: ReloadReport | None = None
        self._pending: tuple[StorePlan, dict[tuple[str, str], ServedVersion]] | None = None

    # ---- loading ----------------------------------------------------------------------------------------

    def load(self, folder: Path, name: str | None = None, version: str | None = None) -> Bundle:
        """Load, verify, check the signature and the schema of one bundle (blocking); ``name`` and ``version``
        (its folders in the store) must be the ones its manifest gives."""
        bundle = load_trusted(folder, self.trusted)
        if (name, version) != (None, None) and (bundle.name, bundle.version) != (name, version):
            raise BundleError(
                f"model bundle {folder}: its manifest names {bundle.name}/{bundle.version}, its folders "
                f"{name}/{version}"
            )
        if self.check is not None:
            self.check(bundle)
        return bundle

    def preload(self, plan: StorePlan | None = None) -> dict[tuple[str, str], ServedVersion]:
        """Load every bundle of the plan and warm its runtime up in this thread (``gshap serve``, before uvicorn
        starts): the first bundle refused raises :class:`BundleError` and closes what was built."""
        plan = plan or self.plan()
        built: dict[tuple[str, str], ServedVersion] = {}
        try:
            for name, version, folder in plan.bundles():
                identity = store_identity(folder)
                runtime = self.build(self.load(folder, name, version))
                built[(name, version)] = ServedVersion(runtime, identity, folder)
                runtime.warm_up()
        except BaseException:
            for served in built.values():
                served.runtime.close()
            raise
        self._pending = (plan, built)
        return built

    def prepare(self, plan: StorePlan | None = None) -> None:
        """Load and verify every bundle of the plan and build its runtime, without warming up (the app's creation:
        its routes and request models come from the bundles); :meth:`start` warms them up and serves them."""
        plan = plan or self.plan()
        built: dict[tuple[str, str], ServedVersion] = {}
        try:
            for name, version, folder in plan.bundles():
                identity = store_identity(folder)
                built[(name, version)] = ServedVersion(self.build(self.load(folder, name, version)), identity, folder)
        except BaseException:
            for served in built.values():
                served.runtime.close()
            raise
        self._pending = (plan, built)

    def pending_default(self) -> ServedVersion:
        """The default model's default version: of the served set, or of what :meth:`start` will serve."""
        if self.served is not None:
            return self._entry(None, None)
        assert self._pending is not None, "nothing prepared"
        plan, built = self._pending
        model = plan.models[plan.default_model]
        return built[(model.name, model.default_version)]

    def served_or_pending(self) -> list[tuple[str, str, ServedVersion, bool]]:
        """:meth:`entries`, or before :meth:`start` the entries it will serve."""
        if self.served is not None or self._pending is None:
            return self.entries()
        plan, built = self._pending
        return [
            (name, version, entry, plan.models[name].default_version == version)
            for (name, version), entry in sorted(built.items())
        ]

    async def start(self) -> None:
        """Load (unless :meth:`preload` did) and start every planned version; the first refusal raises."""
        pending = self._pending
        if pending is None:
            plan = await anyio.to_thread.run_sync(self.plan)
            built: dict[tuple[str, str], ServedVersion] = {}
            try:
                for name, version, folder in plan.bundles():
                    identity = store_identity(folder)
                    bundle = await anyio.to_thread.run_sync(self.load, folder, name, version)
                    built[(name, version)] = ServedVersion(self.build(bundle), identity, folder)
            except BaseException:
                for served in built.values():
                    served.runtime.close()
                raise
        else:
            plan, built = pending
            self._pending = None
        try:
            for served in built.values():
                self._attach(served.runtime)
                await served.runtime.start()
        except BaseException:
            for served in built.values():
                served.runtime.close()
            raise
        self._swap(plan, {key: s for key, s in built.items()})

    def adopt(self, runtime: InferenceRuntime) -> None:
        """Serve one runtime built by the caller (a bundle handed to ``create_app``) as the only model."""
        bundle = runtime.bundle
        from service.model.repository import PlannedModel

        plan = StorePlan(
            models={bundle.name: PlannedModel(bundle.name, {bundle.version: bundle.path}, bundle.version)},
            default_model=bundle.name,
            root=None,
        )
        self._pending = (plan, {(bundle.name, bundle.version): ServedVersion(runtime, b"", bundle.path)})

    def _attach(self, runtime: InferenceRuntime) -> None:
        if self.telemetry is not None:
            runtime.attach_telemetry(self.telemetry.for_model(runtime.bundle.name, runtime.bundle.version))

    def _swap(self, plan: StorePlan, served: dict[tuple[str, str], ServedVersion]) -> None:
        models: dict[str, dict[str, ServedVersion]] = {}
        for (name, version), item in sorted(served.items()):
            models.setdefault(name, {})[version] = item
        defaults: dict[str, str] = {}
        for name, versions in models.items():
            planned = plan.models.get(name)
            wanted = planned.default_version if planned is not None else None
            previous = self.served.defaults.get(name) if self.served is not None else None
            # the plan's default if it is served (it may have been refused), else the one served before, else newest
            for candidate in (wanted, previous, list(versions)[-1]):
                if candidate in versions:
                    defaults[name] = candidate
                    break
        previous_model = self.served.default_model if self.served is not None else None
        default_model = next(
            m for m in (plan.default_model, previous_model, next(iter(sorted(models)), None)) if m in models
        )
        self.served = ServedSet(models=models, defaults=defaults, default_model=default_model)
        self.generation += 1
        for callback in self.on_change:
            callback(self)

    # ---- lookup -----------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.served is not None

    def lookup(self, name: str | None = None, version: str | None = None) -> InferenceRuntime:
        """The runtime of ``name`` at ``version`` (None: the model's default version; no name: the default
        model). :class:`UnknownModel` if nothing by that name or version is served."""
        return self._entry(name, version).runtime

    def _entry(self, name: str | None, version: str | None) -> ServedVersion:
        served = self.served
        if served is None:
            raise LookupError("no model is served yet")
        name = served.default_model if name is None else name
        versions = served.models.get(name)
        if versions is None:
            raise UnknownModel(f"No model named {name!r} is served here.", sorted(served.models))
        version = served.defaults[name] if version is None else version
        found = versions.get(version)
        if found is None:
            raise UnknownModel(f"Model {name!r} has no version {version!r} served here.", list(versions))
        return found

    @contextlib.contextmanager
    def lease(self, name: str | None = None, version: str | None = None) -> Iterator[InferenceRuntime]:
        """The runtime, held for the block: a reload that removes it closes it only after the block ends."""
        entry = self._entry(name, version)
        entry.leases += 1
        try:
            yield entry.runtime
        finally:
            entry.leases -= 1

    def entry_of(self, runtime: InferenceRuntime) -> ServedVersion | None:
        """The served entry of ``runtime`` (to lease it), or None if it is not served (any more)."""
        bundle = runtime.bundle
        served = self.served
        entry = served.models.get(bundle.name, {}).get(bundle.version) if served is not None else None
        return entry if entry is not None and entry.runtime is runtime else None

    def default_runtime(self) -> InferenceRuntime | None:
        """The default model's default version (what the root routes answer for), or None before start."""
        return self.lookup() if self.served is not None else None

    def entries(self) -> list[tuple[str, str, ServedVersion, bool]]:
        """Every served ``(name, version, entry, is_default_version)``, models by name, versions oldest first."""
        served = self.served
        if served is None:
            return []
        return [
            (name, version, entry, served.defaults[name] == version)
            for name, versions in served.models.items()
            for version, entry in versions.items()
        ]

    # ---- reload -----------------------------------------------------------------------------------------

    async def reload(self, reason: str = "") -> ReloadReport:
        """Re-read the store and serve what it says now (see the module's docstring); never raises for a bundle."""
        async with self._lock:
            t0 = time.perf_counter()
            report = ReloadReport()
            current = self.served
            assert current is not None, "reload before start"
            try:
                plan = await anyio.to_thread.run_sync(self.plan)
            except BundleError as exc:  # the store itself (a choice that no longer exists, an empty store)
                report.refused["<store>"] = str(exc)
                logger.warning("reload refused: %s", exc)
                self._finish(report, t0, reason, [("<store>", "")])
                return report
            old: dict[tuple[str, str], ServedVersion] = {
                (n, v): e for n, vs in current.models.items() for v, e in vs.items()
            }
            new: dict[tuple[str, str], ServedVersion] = {}
            refused_keys: list[tuple[str, str]] = []
            for name, version, folder in plan.bundles():
                key = (name, version)
                identity = await anyio.to_thread.run_sync(store_identity, folder)
                before = old.get(key)
                if before is not None and before.identity == identity and before.path == folder:
                    new[key] = before
                    report.kept.append(f"{name}@{version}")
                    continue
                try:
                    bundle = await anyio.to_thread.run_sync(self.load, folder, name, version)
                    runtime = self.build(bundle)
                    self._attach_new(runtime, replacing=before is not None)
                    await runtime.start()
                except BundleError as exc:
                    report.refused[f"{name}@{version}"] = str(exc)
                    refused_keys.append(key)
                    logger.warning("bundle refused at reload, %s: %s", "old one kept" if before else "not served", exc)
                    if before is not None:
                        new[key] = before  # the old one stays served
                    continue
                new[key] = ServedVersion(runtime, identity, folder)
                (report.replaced if before is not None else report.added).append(f"{name}@{version}")
            if not new:
                report.refused["<store>"] = "nothing left to serve; the served set is kept"
                self._finish(report, t0, reason, refused_keys)
                return report
            retired = [e for key, e in old.items() if new.get(key) is not e]
            report.removed = [f"{n}@{v}" for (n, v) in old if (n, v) not in new]
            self._swap(plan, new)
            for entry in retired:
                task = asyncio.ensure_future(self._retire(entry))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            self._finish(report, t0, reason, refused_keys)
            return report

    def _attach_new(self, runtime: InferenceRuntime, *, replacing: bool) -> None:
        if self.telemetry is None:
            return
        bundle = runtime.bundle
        # a replaced version keeps its series; its recorder starts a new drift window for the new files
        runtime.attach_telemetry(self.telemetry.for_model(bundle.name, bundle.version))

    def _finish(self, report: ReloadReport, t0: float, reason: str, refused: list[tuple[str, str]]) -> None:
        served = self.served
        assert served is not None
        report.defaults = dict(served.defaults)
        report.default_model = served.default_model
        report.seconds = round(time.perf_counter() - t0, 3)
        self.last_report = report
        if self.telemetry is not None:
            self.telemetry.record_reload(report.outcome, refused)
        logger.info(
            "reload (%s): added %s, replaced %s, removed %s, kept %d, refused %d; default %s@%s in %.3f s",
            reason or "asked",
            report.added,
            report.replaced,
            report.removed,
            len(report.kept),
            len(report.refused),
            served.default_model,
            served.defaults[served.default_model],
            report.seconds,
        )

    async def _retire(self, entry: ServedVersion, timeout: float = 300.0) -> None:
        """Close a runtime that left the served set once no request holds it (at most ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while entry.leases > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0)  # let a request that just released it send its answer
        bundle = entry.runtime.bundle
        entry.runtime.close()
        if self.telemetry is not None:
            recorder = self.telemetry.for_model(bundle.name, bundle.version)
            if self._serves(bundle.name, bundle.version):
                recorder.set_ready(True)  # replaced by new files: the version is still served
            else:
                recorder.close()

    def _serves(self, name: str, version: str) -> bool:
        served = self.served
        return served is not None and version in served.models.get(name, {})

    async def drain(self) -> None:
        """Wait for the runtimes being retired to close (tests, shutdown)."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    def close(self) -> None:
        """Close every runtime (shutdown)."""
        for task in list(self._retiring):
            task.cancel()
        for _, _, entry, _ in self.entries():
            entry.runtime.close()

"""Where a request's microseconds go: a py-spy profile of a loaded server, as a table and a flame graph.

    py-spy record --native --rate 250 --format raw -o explain.raw -- python -m service.cli serve --port 8000 &
    wrk -t1 -c8 -d12s -s explain.lua http://127.0.0.1:8000/explain      # (benchkit.wrk.wrk_lua_script writes the .lua)
    python scripts/profile_table.py explain.raw --cpu-ms 0.52 --svg docs/bench/flame-explain.svg --md table.md

The raw file holds py-spy's collapsed stacks (``frame;frame;... count``, root first). Only the samples of the
serving process at work are kept: stacks inside the running event loop or in a worker thread, without an import
on them (start-up, the bundle's load and the warm-up are left out). Each sample goes to the category of the
innermost frame that belongs to one (CPython's and libc's own frames belong to none, so a ``write`` made by the
access log counts as logging and one made by uvicorn as the server). ``--cpu-ms`` (the server's CPU time per
request, measured without the profiler: ``scripts/bench_goals.py``'s ``*_cpu_ms``) turns the shares into
microseconds per request. The SVG is a plain flame graph of the same samples (root at the bottom; hover for
the frame and its share).
"""

from __future__ import annotations

import argparse
import collections
import html
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["CATEGORIES", "categorize", "flame_svg", "load_stacks", "request_stacks", "table"]

# (category, frame pattern), tried in this order on each frame from the innermost out
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("kernel hand-off (submit, pipe, collect)", r"runner_submit|runner_collect|kernel_threads\.py"),
    ("kernel (exact C)", r"_exact|exact_kernel\.py"),
    ("metrics", r"prometheus_client|service/api/metrics\.py|[(/]metrics\.py|service/observe|[(/]drift\.py|_binning"),
    ("logging", r"logging/|[(/]observability\.py:.*(log|_emit)|Logger\.|Handler\.|Formatter\."),
    ("model forward (torch)", r"torch/|libtorch|torch/nn/"),
    (
        "runtime: records in, answers out (inference, batching, words)",
        r"service/runtime/|service/engine/gradient_shap\.py|service/render/text\.py|service/contract\.py"
        r"|service/model/(store|preprocess|spec|features)\.py",
    ),
    ("numpy", r"numpy|_multiarray"),
    ("validation (pydantic)", r"pydantic|validate_python|validate_json|service/schemas\.py"),
    ("JSON parse", r"json/decoder|loads \(json/|orjson.*loads|Request\.json|Request\.body|_json\.c|^_pairs \("),
    (
        "answer building, serialisation",
        r"json/encoder|jsonable_encoder|JSONResponse|\.render |orjson|serialize_response|json_answer",
    ),
    ("route handlers", r"service/api/routes|\(predict\.py|\(explain\.py|routes/__init__\.py"),
    ("FastAPI dependencies, routing", r"fastapi/|starlette/routing|\(routing\.py|\(utils\.py|solve_dependencies"),
    ("middlewares (service)", r"Middleware\.__call__ \((security|observability|page|app)\.py|service/api/"),
    ("middlewares (Starlette, others)", r"Middleware|starlette/|_asgi\.py|_body_limit\.py"),
    (
        "server (uvicorn, uvloop, httptools)",
        r"uvicorn|httptools|uvloop|loop\.c|core\.c|linux\.c|stream\.c|"
        r"asyncio|_asynciomodule|tcp\.c|handles/",
    ),
    ("garbage collection", r"gc_collect|gcmodule"),
)
_COMPILED = tuple((name, re.compile(pattern)) for name, pattern in CATEGORIES)
OTHER = "other (interpreter, libc: mostly threads handing work over)"


def load_stacks(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) stacks: root-first frames and a sample count per line."""
    out = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


# innermost frames of a thread that waits (no CPU): the loop in epoll, an executor thread for work, a kernel thread
# for a call, a thread for the GIL (CPython's take_gil waits on a condition variable)
_WAITS = re.compile(
    r"^(epoll_wait|epoll_pwait|uv__io_poll|_queue_SimpleQueue_get\w*|PyThread_acquire_lock_timed|pthread_cond_wait|"
    r"pthread_cond_timedwait|select|poll|__futex\w*|futex_wait\w*) "
)
_WAIT_DEPTH = 4  # how many innermost frames may show the wait (libc's own frames come below the named call)


def is_wait(frames: Sequence[str]) -> bool:
    """Whether a sample is a thread waiting (for events, work or the GIL) rather than using the CPU."""
    return any(_WAITS.search(frame) for frame in frames[-_WAIT_DEPTH:])


def request_stacks(
    stacks: Iterable[tuple[list[str], int]], waits: list[tuple[list[str], int]] | None = None
) -> list[tuple[list[str], int]]:
    """The samples of the server at work: in the running event loop, a Python thread or the exact kernel's own C
    threads (``runner_thread``), with no import on the stack. Samples of a thread that waits (:func:`is_wait`)
    are left out, and appended to ``waits`` when given: py-spy samples waiting threads too, which use no CPU."""
    kept = []
    for frames, n in stacks:
        joined = ";".join(frames)
        if "_find_and_load" in joined or "load_bundle" in joined or "warm_up" in joined:
            continue
        if "Loop__run" in joined or "run_forever" in joined or "(threading.py" in joined or "runner_thread" in joined:
            if is_wait(frames):
                if waits is not None:
                    waits.append((frames, n))
                continue
            kept.append((frames, n))
    return kept


def categorize(frames: Sequence[str]) -> str:
    """The category of the innermost frame that belongs to one (``OTHER`` if none does)."""
    for frame in reversed(frames):
        for name, pattern in _COMPILED:
            if pattern.search(frame):
                return name
    return OTHER


def table(
    stacks: Sequence[tuple[list[str], int]], cpu_ms: float | None, extra: Sequence[tuple[str, float]] = ()
) -> str:
    """Markdown: samples, share and (with ``cpu_ms``, the sampled threads' CPU per request) microseconds per request,
    by category; ``extra`` rows (name, ms per request) are CPU measured another way, e.g. threads py-spy does not
    see (the exact kernel's C threads: their CPU time from ``/proc/<pid>/task``), added to the total."""
    counts: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        counts[categorize(frames)] += n
    total = sum(counts.values()) or 1
    lines = ["| where | samples | share of the samples | µs per request |", "|---|---:|---:|---:|"]
    for name, n in counts.most_common():
        us = f"{n / total * cpu_ms * 1000:,.0f}" if cpu_ms else "–"
        lines.append(f"| {name} | {n:,} | {n / total * 100:.1f} % | {us} |")
    for name, ms in extra:
        lines.append(f"| {name} | – | – | {ms * 1000:,.0f} |")
    all_ms = (cpu_ms or 0.0) + sum(ms for _, ms in extra)
    us_total = f"{all_ms * 1000:,.0f}" if cpu_ms else "–"
    lines.append(f"| **total** | {total:,} | 100 % | {us_total} |")
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1]}" if where else name


def flame_svg(stacks: Sequence[tuple[list[str], int]], title: str, width: int = 1600, row: int = 16) -> str:
    """A flame graph (root at the bottom) of ``stacks`` as a standalone SVG."""
    tree: dict[str, object] = {}
    counts: dict[tuple[str, ...], int] = collections.defaultdict(int)
    for frames, n in stacks:
        path: tuple[str, ...] = ()
        for frame in frames:
            path = (*path, _short(frame))
            counts[path] += n
    del tree
    total = sum(n for _, n in stacks) or 1
    depth = max((len(p) for p in counts), default=1)
    height = (depth + 3) * row
    children: dict[tuple[str, ...], list[tuple[str, ...]]] = collections.defaultdict(list)
    for p in counts:
        children[p[:-1]].append(p)
    rects: list[str] = []

    def draw(path: tuple[str, ...], x: float) -> None:
        for child in sorted(children.get(path, []), key=lambda c: c[-1]):
            w = counts[child] / total * width
            if w >= 0.3:
                y = height - (len(child) + 1) * row
                label = html.escape(child[-1])
                shown = html.escape(child[-1][: int(w / 7)])
                share = counts[child] / total * 100
                hue = 10 + (hash(child[-1].split(" (")[-1]) % 50)
                text = f'<text x="{x + 2:.1f}" y="{y + row - 4}">{shown}</text>' if w > 35 else ""
                rects.append(
                    f'<g><title>{label} — {share:.2f} %</title><rect x="{x:.1f}" y="{y}" width="{w:.1f}" '
                    f'height="{row - 1}" fill="hsl({hue},85%,60%)"/>{text}</g>'
                )
                draw(child, x)
            x += w

    draw((), 0.0)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
        f'font-size="11"><rect width="100%" height="100%" fill="#fff"/>'
        f'<text x="4" y="14" font-size="13">{html.escape(title)}</text>' + "".join(rects) + "</svg>\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("raw", type=Path, help="py-spy record --format raw output")
    p.add_argument("--cpu-ms", type=float, default=None, help="server CPU ms per request (turns shares into µs)")
    p.add_argument("--svg", type=Path, default=None, help="write the flame graph here")
    p.add_argument("--title", default=None, help="the flame graph's title")
    p.add_argument("--md", type=Path, default=None, help="write the table here (else print it)")
    p.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="NAME=MS",
        help="a row of CPU ms per request measured another way (e.g. the kernel's C threads), added to the total",
    )
    args = p.parse_args(argv)
    waits: list[tuple[list[str], int]] = []
    stacks = request_stacks(load_stacks(args.raw), waits)
    if not stacks:
        print(f"{args.raw}: no sample of a serving event loop", file=sys.stderr)
        return 1
    extra = []
    for item in args.add:
        name, _, ms = item.rpartition("=")
        extra.append((name, float(ms)))
    md = table(stacks, args.cpu_ms, extra)
    waited = sum(n for _, n in waits)
    md += f"\n({waited:,} samples of threads waiting, for events, work or the GIL, are left out: they use no CPU.)\n"
    if args.md:
        args.md.write_text(md)
    else:
        print(md)
    if args.svg:
        args.svg.write_text(flame_svg(stacks, args.title or args.raw.stem))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Plots from the API: POST /explain/plot and GET /groups/{group}/plot, drawn by service.render like `gshap figures`."""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import matplotlib.image as mpimg
import pytest
from helpers import AppClient, app_client, default_spec, record

from service.api.app import create_app
from service.config import Settings
from service.model.store import Bundle
from service.render import group_chart, waterfall_chart
from service.render.mpl import render_png
from service.render.svg import chart_svg, nice_ticks

SCHEMA_SPEC = default_spec()

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def client(bundle: Bundle) -> Iterator[AppClient]:
    with app_client(create_app(Settings(log_level="warning"), bundle)) as c:
        yield c


def _features(svg: bytes) -> list[str]:
    return re.findall(r'data-feature="([a-z_]+)"', svg.decode())


def test_explain_plot_is_an_svg_with_one_group_per_feature(client: AppClient) -> None:
    """The default answer is image/svg+xml holding one data-feature group per feature, no inline style."""
    r = client.post("/explain/plot", json=record())
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/svg+xml"
    assert sorted(_features(r.content)) == sorted(SCHEMA_SPEC.names)
    assert r.content.startswith(b"<svg ")
    assert b"style=" not in r.content
    assert b"Insulin = 125 \xc2\xb5U/mL (imputed)" in r.content  # the example's insulin 0 = not measured


def test_explain_plot_is_the_waterfall_of_the_explanation(client: AppClient) -> None:
    """The SVG is the render module's waterfall of the very /explain answer: the same figure code, byte for byte."""
    body = record(glucose=None, bmi=61.0)
    ex = client.post("/explain", json=body).json()
    contributions = [SimpleNamespace(**a) for a in ex["attributions"]]
    chart = waterfall_chart(
        contributions,
        ex["base_value"],
        ex["output_value"],
        output=ex["output"],
        title=f"{ex['prediction']['probability']:.0%} predicted risk of {SCHEMA_SPEC.positive_label}",
        positive=SCHEMA_SPEC.positive_label,
    )
    assert client.post("/explain/plot", json=body).content == chart_svg(chart)
    # largest attribution first
    order = _features(chart_svg(chart))
    sizes = {a["feature"]: abs(a["attribution"]) for a in ex["attributions"]}
    assert [sizes[f] for f in order] == sorted(sizes.values(), reverse=True)


def test_explain_plot_png(client: AppClient) -> None:
    """?format=png (or Accept: image/png alone) answers a non-blank PNG picture."""
    r = client.post("/explain/plot?format=png", json=record())
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.content.startswith(PNG_MAGIC)
    img = mpimg.imread(io.BytesIO(r.content))
    assert img.shape[0] > 300
    assert img.shape[1] > 600
    assert (img[..., :3].std(axis=(0, 1)) > 0.05).all()
    negotiated = client.post("/explain/plot", json=record(), headers={"Accept": "image/png"})
    assert negotiated.headers["content-type"] == "image/png"
    both = client.post("/explain/plot", json=record(), headers={"Accept": "image/png, image/svg+xml"})
    assert both.headers["content-type"] == "image/svg+xml"


def test_explain_plot_refuses_like_explain(client: AppClient) -> None:
    """A bad record or format is a 422 problem naming the field, as for POST /explain."""
    r = client.post("/explain/plot", json=record(glucose=900))
    assert r.status_code == 422
    assert r.headers["content-type"] == PROBLEM
    assert [e["field"] for e in r.json()["errors"]] == ["glucose"]
    r = client.post("/explain/plot?format=gif", json=record())
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"].endswith("format")
    r = client.post("/explain/plot", content=b"glucose=1", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_explain_plot_on_the_probability_scale(client: AppClient) -> None:
    """With output=probability the picture is labelled in probabilities, not logits."""
    r = client.post("/explain/plot", json={**record(), "output": "probability"})
    assert r.status_code == 200
    assert b"probability of diabetes" in r.content
    assert b"logit (log-odds" not in r.content


def test_group_plot(client: AppClient) -> None:
    """GET /groups/{group}/plot draws the group's mean attributions with intervals; unknown groups are 404."""
    r = client.get("/groups/tp/plot")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/svg+xml"
    assert sorted(_features(r.content)) == sorted(SCHEMA_SPEC.names)
    assert r.content.count(b"<path d=") == len(SCHEMA_SPEC.names)  # one interval per feature
    assert b"n=37" in r.content
    png = client.get("/groups/ALL/plot?format=png")
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(PNG_MAGIC)
    missing = client.get("/groups/XY/plot")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM


def test_svg_is_deterministic(client: AppClient, bundle: Bundle) -> None:
    """The same request gives the same bytes (our own writer: no ids, dates or salts)."""
    a = client.post("/explain/plot", json=record(age=33)).content
    b = client.post("/explain/plot", json=record(age=33)).content
    assert a == b
    labels = {f.name: f.label_with_unit() for f in bundle.spec}
    assert bundle.groups is not None
    chart = group_chart("FN", bundle.groups["FN"], labels)
    assert chart_svg(chart) == chart_svg(chart)


def test_svg_escapes_text() -> None:
    """Labels are XML-escaped: a label cannot inject markup into the picture."""
    row = SimpleNamespace(
        feature="x", label='<script>alert("x")</script>', unit="&", value=1.0, imputed=False, attribution=0.5
    )
    svg = chart_svg(waterfall_chart([row], 0.0, 0.5))
    assert b"<script>" not in svg
    assert b"&lt;script&gt;" in svg


def test_png_rendering_is_thread_safe(bundle: Bundle) -> None:
    """PNGs drawn on four threads at once are byte-identical to the one drawn alone (no shared pyplot state)."""
    labels = {f.name: f.label_with_unit() for f in bundle.spec}
    assert bundle.groups is not None
    charts = [group_chart(name, bundle.groups[name], labels) for name in ("TP", "TN", "FP", "FN")]
    alone = [render_png(c) for c in charts]
    together: list[bytes] = [b""] * len(charts)
    errors: list[BaseException] = []

    def draw(i: int) -> None:
        try:
            together[i] = render_png(charts[i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=draw, args=(i,)) for i in range(len(charts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert together == alone


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [(0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]), (-3.4, 0.3, [-3.0, -2.0, -1.0, 0.0]), (0.0, 0.0, [0.0])],
)
def test_nice_ticks(lo: float, hi: float, expected: list[float]) -> None:
    """Axis ticks are round numbers inside the range."""
    assert nice_ticks(lo, hi) == pytest.approx(expected)

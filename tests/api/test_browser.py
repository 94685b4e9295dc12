"""The page, /docs and /redoc in a real browser (Debian's headless Chromium) against a real uvicorn server.

Each test checks what a person sees: the risk and the bars after submitting a record, an API error next to its
field, the docs' operations rendered, the page usable by keyboard and at phone width, and that no request left
the machine (the browser's own DevTools network log).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from browser import chromium, console_errors, network_urls
from live_server import LiveServer, running_server
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 20.0
LOCAL = {"127.0.0.1"}
KEY = "browser-test-key"


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with running_server() as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        network_urls(driver)  # the browser's own start-up (its new-tab page) is not the page's
        yield driver


def _wait(driver: Any, condition: Any) -> Any:
    return WebDriverWait(driver, WAIT).until(condition)


def _open_page(driver: Any, url: str) -> None:
    driver.get(url + "/")
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "input[name='glucose']"))
    network_urls(driver)  # only the requests and console messages of what the test does next
    console_errors(driver)


def _fill(driver: Any, values: dict[str, Any]) -> None:
    for name, value in values.items():
        field = driver.find_element(By.NAME, name)
        field.clear()
        if value is not None:
            field.send_keys(str(value))


def _left_the_machine(urls: list[str], base: str) -> list[str]:
    """URLs of network requests to anywhere but this machine (data: and blob: stay in the browser)."""
    return [
        u for u in urls if urlsplit(u).scheme in ("http", "https", "ws", "wss") and urlsplit(u).hostname not in LOCAL
    ]


EXAMPLE = {
    "pregnancies": 6,
    "glucose": 148,
    "blood_pressure": 72,
    "skin_thickness": 35,
    "insulin": None,
    "bmi": 33.6,
    "diabetes_pedigree_function": 0.627,
    "age": 50,
}


def test_page_explains_a_record(server: LiveServer, browser: Any) -> None:
    """Fill in a record and submit: the risk in #risk, 8 bars in svg#attributions, the notes and the comparison."""
    _open_page(browser, server.url)
    inputs = browser.find_elements(By.CSS_SELECTOR, "#fields input")
    assert [i.get_attribute("name") for i in inputs] == list(EXAMPLE)
    # the labels, units and the "not measured" rule come from GET /model
    assert "(mg/dL)" in browser.find_element(By.CSS_SELECTOR, "label[for='f-glucose']").text
    assert browser.find_element(By.NAME, "insulin").get_attribute("placeholder") == "not measured"
    assert browser.find_element(By.NAME, "age").get_attribute("aria-required") == "true"
    _fill(browser, EXAMPLE)
    browser.find_element(By.ID, "submit").click()
    _wait(browser, lambda d: d.find_element(By.ID, "risk").text)
    expected = httpx.post(server.url + "/explain", json=EXAMPLE).json()
    assert browser.find_element(By.ID, "risk").text == f"{round(expected['prediction']['probability'] * 100)}%"
    svg = browser.find_element(By.CSS_SELECTOR, "svg#attributions")
    bars = svg.find_elements(By.CSS_SELECTOR, "[data-feature]")
    assert len(bars) == 8
    assert sorted(b.get_attribute("data-feature") for b in bars) == sorted(EXAMPLE)
    assert all(float(b.find_element(By.TAG_NAME, "rect").get_attribute("width")) >= 1 for b in bars)
    notes = browser.find_elements(By.CSS_SELECTOR, "#notes li[data-note='imputed']")
    assert [n.get_attribute("data-feature") for n in notes] == ["insulin"]
    assert "not measured" in notes[0].text
    rows = browser.find_elements(By.CSS_SELECTOR, "#comparison tbody tr")
    assert len(rows) == 8
    assert "closest to the mean explanation" in browser.find_element(By.ID, "comparison-summary").text
    assert console_errors(browser) == []
    urls = network_urls(browser)
    assert {urlsplit(u).path for u in urls} >= {"/explain", "/explain/plot"}
    assert _left_the_machine(urls, server.url) == []


def test_out_of_range_value_gets_a_note(server: LiveServer, browser: Any) -> None:
    """A value outside the training range is explained with the API's warning in the notes."""
    _open_page(browser, server.url)
    _fill(browser, {**EXAMPLE, "bmi": 70})
    browser.find_element(By.ID, "submit").click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#notes li[data-note='outside_training_range']"))
    note = browser.find_element(By.CSS_SELECTOR, "#notes li[data-note='outside_training_range']")
    assert note.get_attribute("data-feature") == "bmi"
    assert "extrapolates" in note.text


def test_bad_value_is_shown_next_to_its_field(server: LiveServer, browser: Any) -> None:
    """A value the API refuses (glucose over 600) and a missing required one are shown at their fields."""
    _open_page(browser, server.url)
    _fill(browser, {**EXAMPLE, "glucose": 9999, "age": None})
    browser.find_element(By.ID, "submit").click()
    _wait(browser, lambda d: d.find_element(By.ID, "e-glucose").text)
    assert "less than or equal to 600" in browser.find_element(By.ID, "e-glucose").text
    assert browser.find_element(By.NAME, "glucose").get_attribute("aria-invalid") == "true"
    assert "required" in browser.find_element(By.ID, "e-age").text.lower()
    assert browser.find_element(By.ID, "e-bmi").text == ""
    # the first refused field has the focus, so a keyboard user lands on it
    assert browser.switch_to.active_element.get_attribute("name") == "glucose"
    assert browser.find_element(By.ID, "result").get_attribute("hidden") is not None
    # fixing it clears the errors and explains
    _fill(browser, {"glucose": 120, "age": 40})
    browser.find_element(By.ID, "submit").click()
    _wait(browser, lambda d: d.find_element(By.ID, "risk").text)
    assert browser.find_element(By.ID, "e-glucose").text == ""


def test_page_works_from_the_keyboard(server: LiveServer, browser: Any) -> None:
    """Tab reaches every field in order, Enter submits, and the focus moves to the result."""
    _open_page(browser, server.url)
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    seen = []
    for _ in range(40):
        active = browser.switch_to.active_element
        name = active.get_attribute("name")
        if name in EXAMPLE:
            seen.append(name)
            if EXAMPLE[name] is not None:
                active.send_keys(str(EXAMPLE[name]))
        if name == "age":
            break
        active.send_keys(Keys.TAB)
    assert seen == list(EXAMPLE)
    # a visible focus ring on the focused field
    outline = browser.execute_script("return getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    _wait(browser, lambda d: d.find_element(By.ID, "risk").text)
    _wait(browser, lambda d: d.switch_to.active_element.get_attribute("id") == "result-title")


def test_page_is_readable_at_phone_width(server: LiveServer, browser: Any) -> None:
    """At a phone's 390 px nothing overflows sideways and the chart is drawn for the screen, labels above bars."""
    phone = browser
    phone.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
    )
    try:
        _open_page(phone, server.url)
        _fill(phone, EXAMPLE)
        phone.find_element(By.ID, "submit").click()
        _wait(phone, lambda d: d.find_element(By.ID, "risk").text)
        width = phone.execute_script("return document.documentElement.clientWidth")
        assert width == 390
        assert phone.execute_script("return document.documentElement.scrollWidth") <= width
        chart = phone.find_element(By.ID, "attributions")
        assert 250 <= chart.size["width"] <= width
        # drawn at its size, not shrunk from a desktop picture: the type stays readable
        assert int(chart.get_dom_attribute("viewBox").split()[2]) <= 400
        assert phone.find_element(By.NAME, "glucose").size["width"] > 250
    finally:
        phone.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_page_first_load_is_under_100_kb(server: LiveServer) -> None:
    """A first visit (cold cache, fresh profile) transfers at most 100 kB: page, script, style, icon, JSON."""
    with chromium() as fresh:
        fresh.get(server.url + "/")
        _wait(fresh, lambda d: d.find_elements(By.CSS_SELECTOR, "#fields input"))
        entries = fresh.execute_script(
            "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
            ".map(e => [new URL(e.name).pathname, e.transferSize])"
        )
    sizes = dict(entries)
    assert {"/", "/static/page.js", "/static/page.css", "/model", "/groups"} <= set(sizes)
    assert all(size > 0 for size in sizes.values()), sizes  # really transferred, not from a cache
    assert sum(sizes.values()) <= 100_000, sizes


def test_model_card_view(server: LiveServer, browser: Any) -> None:
    """The second view shows the metrics with their intervals, the population and the limitations."""
    _open_page(browser, server.url)
    browser.find_element(By.ID, "nav-model").click()
    _wait(browser, lambda d: d.find_element(By.ID, "view-model").is_displayed())
    assert not browser.find_element(By.ID, "view-explain").is_displayed()
    card = httpx.get(server.url + "/model").json()
    auc = card["metrics"]["mlp"]["roc_auc"]
    row = browser.find_element(By.CSS_SELECTOR, "#card-metrics ~ div tr[data-metric='roc_auc']")
    assert f"{auc['ci_low']:.3f}".rstrip("0") in row.text
    assert f"{auc['ci_high']:.3f}".rstrip("0") in row.text
    headings = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#card h2")]
    assert {"Performance", "Population", "Limitations"} <= set(headings)
    population = browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby='card-population']").text
    assert str(card["data"]["records"]) in population
    browser.find_element(By.ID, "nav-explain").click()
    _wait(browser, lambda d: d.find_element(By.ID, "view-explain").is_displayed())


def test_docs_render_offline(server: LiveServer, browser: Any) -> None:
    """/docs shows every operation, and /redoc every path, with no request leaving the machine."""
    operations = httpx.get(server.url + "/openapi.json").json()["paths"]
    count = sum(len(item) for item in operations.values())
    network_urls(browser)
    browser.get(server.url + "/docs")
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) == count)
    assert "/explain/plot" in browser.find_element(By.ID, "swagger-ui").text
    urls = network_urls(browser)
    assert any(u.endswith("/static/vendor/swagger-ui-bundle.js") for u in urls)
    assert _left_the_machine(urls, server.url) == []
    assert console_errors(browser) == []
    browser.get(server.url + "/redoc")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-section-id^='operation/']"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "[data-section-id^='operation/']")) == count
    urls = network_urls(browser)
    assert any(u.endswith("/static/vendor/redoc.standalone.js") for u in urls)
    # ReDoc's bundle always asks for its vendor's logo from a CDN; the page's CSP stops it in the browser
    outside = _left_the_machine(urls, server.url)
    assert outside in ([], ["https://cdn.redoc.ly/redoc/logo-mini.svg"])
    errors = console_errors(browser)
    assert all("Content Security Policy" in e and "cdn.redoc.ly" in e for e in errors), errors


def test_page_asks_for_the_api_key(browser: Any) -> None:
    """With GSHAP_API_KEYS the page loads, asks for the key on 401 and then explains."""
    with running_server({"GSHAP_API_KEYS": KEY}) as keyed:
        browser.get(keyed.url + "/")
        _wait(browser, lambda d: d.find_element(By.ID, "key-box").is_displayed())
        assert browser.switch_to.active_element.get_attribute("id") == "api-key"
        browser.find_element(By.ID, "api-key").send_keys(KEY)
        browser.find_element(By.ID, "submit").click()
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "input[name='glucose']"))
        _fill(browser, EXAMPLE)
        browser.find_element(By.ID, "submit").click()
        _wait(browser, lambda d: d.find_element(By.ID, "risk").text)
        assert len(browser.find_elements(By.CSS_SELECTOR, "svg#attributions [data-feature]")) == 8


def test_page_picks_the_model_and_version(server: LiveServer, browser: Any) -> None:
    """The shipped store serves two Pima versions (and the breast-cancer model's two): the page offers each (the
    store's default chosen), and picking 1.0.0
    rebuilds the form from that version's card and explains with it (its risk, its routes)."""
    from selenium.webdriver.support.ui import Select

    _open_page(browser, server.url)
    _wait(browser, lambda d: d.find_element(By.ID, "model-picker").is_displayed())
    pick = Select(browser.find_element(By.ID, "model-pick"))
    pima = [o.text for o in pick.options if o.text.startswith("pima-diabetes ")]
    assert pima == ["pima-diabetes 1.0.0", "pima-diabetes 1.1.0 (default)"]
    assert any(o.text.startswith("breast-cancer-wisconsin 1.1.0") for o in pick.options)  # the other shipped model
    assert pick.first_selected_option.text == "pima-diabetes 1.1.0 (default)"
    pick.select_by_visible_text("pima-diabetes 1.0.0")
    _wait(browser, lambda d: d.find_element(By.ID, "model-name").text == "pima-diabetes/1.0.0")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "input[name='glucose']"))
    _fill(browser, EXAMPLE)
    browser.find_element(By.ID, "submit").click()
    _wait(browser, lambda d: d.find_element(By.ID, "risk").text)
    base = "/models/pima-diabetes/versions/1.0.0"
    expected = httpx.post(server.url + base + "/explain", json=EXAMPLE).json()
    default = httpx.post(server.url + "/explain", json=EXAMPLE).json()
    assert expected["prediction"]["probability"] != default["prediction"]["probability"]
    assert browser.find_element(By.ID, "risk").text == f"{round(expected['prediction']['probability'] * 100)}%"
    paths = {urlsplit(u).path for u in network_urls(browser)}
    assert {base + "/explain", base + "/explain/plot"} <= paths
    assert console_errors(browser) == []
    pick.select_by_visible_text("pima-diabetes 1.1.0 (default)")  # back to the default for the other tests
    _wait(browser, lambda d: d.find_element(By.ID, "model-name").text == "pima-diabetes/1.1.0")

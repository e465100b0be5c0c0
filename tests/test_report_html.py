"""report.html: the markdown's tables as one page that opens from disk offline, checked as parsed HTML and in a real
headless Chromium (Debian's chromium + chromium-driver, driven by selenium): sorting, <details>, links, no requests."""
from __future__ import annotations

import base64
import math
import re
import shutil
import statistics
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from segbench.report import build_report
from segbench.report.protocols import card_hash
from study_files import write_study

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WEIRD = '<i class="x">&amp;\'y'  # a backbone name that is also markup (no "/": it names a directory too)
CITY = {"r18": [30.0, 34.0, 35.0], "r18_ibn_b": [40.0, 41.0, 45.0], WEIRD: [36.0, 20.0, 29.0]}


def card(source, targets, crop=(768, 768)):
    return {"sources": [source], "train": {"crop": list(crop)},
            "targets": {t: {"split": "val", "classes": [0, 13]} for t in targets}}


def record(backbone, seed, mious, *, source="gta"):
    results = {t: {"miou": m, "pixel_acc": 50.0, "per_class_iou": {"road": m + 10, "car": m - 10},
                   "eval": {"split": "val", "size": None}} for t, m in mious.items()}
    return {"cell_id": f"{seed}{backbone}", "backbone": backbone, "head": "fcn",
            "source": source, "seed": seed, "config": {"model": {"output_stride": 8},
                                                       "train": {"iters": 3, "note": "</pre><i>"}},
            "results": results, "protocol": card(source, ["gta", "city"])}


def study_records():
    """Three backbones x three seeds trained on gta, scored on gta and city; r50 only on gta so far (a dash for
    city), all under one protocol card."""
    recs = [record(b, s, {"gta": 60.0 + s + k, "city": CITY[b][s]}) for k, b in enumerate(CITY) for s in range(3)]
    return recs + [record("r50", s, {"gta": 70.0 + s}) for s in range(2)]


def make_study(root, plot=False, baseline="r18"):
    study = write_study(root / "study", study_records())
    cells = sorted((study / "cells").iterdir())
    (cells[0] / "launcher.log").write_text("worker output\n")
    (cells[1] / "train_log.csv").write_text("iter,loss\n1,2.0\n")
    build_report(study, plot=plot, baseline=baseline)
    return study


# --- a parsed view of the page and of the markdown ----------------------------------------------------------------

class Page(HTMLParser):
    """Tables (header texts, rows of cell texts; a row label as its data-sort), links, sources and scripts."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.tables, self.hrefs, self.srcs, self.scripts, self.details = [], [], [], [], 0
        self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append({"header": [], "rows": [], "class": attrs.get("class")})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th") and self._cell is None:
            self._cell = {"tag": tag, "text": "", "sort": attrs.get("data-sort")}
        elif tag == "details":
            self.details += 1
        self.hrefs += [attrs["href"]] if "href" in attrs else []
        self.srcs += [attrs["src"]] if "src" in attrs else []
        self.scripts += [attrs] if tag == "script" else []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._cell["tag"] == tag:
            cell, self._cell = self._cell, None
            text = cell["sort"] if cell["sort"] is not None else cell["text"].strip()
            (self.tables[-1]["header"] if tag == "th" else self.tables[-1]["rows"][-1]).append(text)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data

    def body(self, k):
        return [r for r in self.tables[k]["rows"] if r]


def markdown_tables(text):
    """Every GitHub table in a markdown text as (header, rows), cells unescaped."""
    tables, current = [], None
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if current is None:
                current = (cells, [])
            elif not set(line) <= set("|:- "):
                current[1].append(cells)
        elif current is not None:
            tables.append(current)
            current = None
    return tables


def expected_tables(study):
    """The markdown tables of the page's sections, in the page's order."""
    return [t for name in ("table.md", "dg.md", "paired.md", "per_class.md")
            for t in markdown_tables((study / name).read_text())]


def mean_se(values):
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values) / math.sqrt(len(values)):.1f}"


# --- the page as HTML -------------------------------------------------------------------------------------------------

def test_one_table_per_layout_with_the_markdown_entries(tmp_path):
    study = make_study(tmp_path)
    page = Page((study / "report.html").read_text())
    tables = expected_tables(study)
    # paper 1, DG 1 (one source), paired 1, per-class 2 (gta/gta, gta/city), and the cells' list is no table
    assert len(tables) == 5 and len(page.tables) == 5
    for k, (header, rows) in enumerate(tables):
        assert page.tables[k]["header"] == header and page.body(k) == rows and page.tables[k]["class"] == "sortable"
    paper = {r[0]: r for r in page.body(0)}
    assert page.tables[0]["header"] == ["backbone", "train gta / test gta", "train gta / test city"]
    for b, values in CITY.items():  # typed from the formula: mean ± sample std / sqrt(n)
        assert paper[b][2] == mean_se(values)
    assert paper["r50"][1:] == [f"{statistics.fmean([70.0, 71.0]):.1f} ± 0.5 (n=2)", "–"]


def test_text_from_records_is_escaped(tmp_path):
    study = make_study(tmp_path)
    text = (study / "report.html").read_text()
    assert WEIRD not in text and "</pre><i>" not in text
    assert "&lt;i class=&quot;x&quot;&gt;&amp;amp;&#x27;y" in text
    page = Page(text)
    assert WEIRD in {r[0] for r in page.body(0)}  # unescaped by the parser: exactly the record's name
    assert len(page.scripts) == 1 and "src" not in page.scripts[0]  # the inline sorter only


def test_self_contained_figures_and_links(tmp_path):
    study = make_study(tmp_path, plot=True)
    page = Page((study / "report.html").read_text())
    assert not [u for u in page.hrefs + page.srcs if re.match(r"(?i)\s*(https?:)?//", u)]
    figures = {p.name: p.read_bytes() for p in study.glob("*.png")}
    assert set(figures) == {"table.png", "per_class_iou.png", "gap.png", "paired.png"}
    assert len(page.srcs) == 4
    inlined = [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in page.srcs]
    assert all(s.startswith("data:image/png;base64,") for s in page.srcs)
    assert sorted(inlined) == sorted(figures.values())
    targets = {(study / unquote(h)).resolve() for h in page.hrefs}
    assert all(t.is_file() for t in targets)
    cells = sorted((study / "cells").iterdir())
    wanted = {(c / "record.json").resolve() for c in cells}
    wanted |= {(cells[0] / "launcher.log").resolve(), (cells[1] / "train_log.csv").resolve()}
    assert targets == wanted
    assert not list(study.glob(".*"))  # written atomically: no temporary file left


def test_each_row_opens_its_protocol_card_config_and_cells(tmp_path):
    study = make_study(tmp_path)
    text = (study / "report.html").read_text()
    page = Page(text)
    assert page.details == 4 + 4 + 3 + 4 + 3  # a <details> per row label of each table
    h = card_hash(card("gta", ["gta", "city"]))
    row = text[text.index("<summary>r18_ibn_b</summary>"):]
    row = row[:row.index("</details>")]
    assert f"protocol card {h}" in row and "crop: [768, 768]" in row and "classes: [road, car]" in row
    assert "config (seeds 0, 1, 2)" in row and "iters: 3" in row and "&lt;/pre&gt;&lt;i&gt;" in row
    assert row.count("record.json</a>") == 3 and "r18__fcn" not in row.replace("r18_ibn_b__fcn", "")
    r50 = text[text.index("<summary>r50</summary>"):]
    r50 = r50[:r50.index("</details>")]
    assert "config (seeds 0, 1)" in r50 and r50.count("record.json</a>") == 2 and "r18" not in r50


# --- in a real browser ------------------------------------------------------------------------------------------------

def _browser(user_dir):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver "
                    "(bash .ci/setup does it as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={user_dir}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture
def browser(tmp_path):
    driver = _browser(tmp_path / "chromium-profile")
    yield driver
    driver.quit()
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def _column(driver, table, col):
    return driver.execute_script(
        "return Array.from(arguments[0].tBodies[0].rows, r => [r.cells[0].getAttribute('data-sort'),"
        " r.cells[arguments[1]].textContent.trim()]);", table, col)


def test_page_in_headless_chromium(tmp_path, browser):
    from selenium.webdriver.common.by import By

    study = make_study(tmp_path, plot=True)
    browser.get((study / "report.html").resolve().as_uri())
    tables = browser.find_elements(By.CSS_SELECTOR, "table.sortable")
    assert len(tables) == 5
    paper = tables[0]
    heads = paper.find_elements(By.TAG_NAME, "th")

    heads[2].click()  # train gta / test city: highest mean first, the unmeasured r50 last
    by_mean = sorted(CITY, key=lambda b: statistics.fmean(CITY[b]), reverse=True)
    assert _column(browser, paper, 2) == [[b, mean_se(CITY[b])] for b in by_mean] + [["r50", "–"]]
    assert heads[2].get_attribute("aria-sort") == "descending"
    heads[2].click()  # again: reversed, the dash still last
    assert [r[0] for r in _column(browser, paper, 2)] == by_mean[::-1] + ["r50"]
    assert heads[2].get_attribute("aria-sort") == "ascending"
    heads[0].click()  # text column: by name, then reversed
    names = sorted(["r50", *CITY])
    assert [r[0] for r in _column(browser, paper, 0)] == names
    heads[0].click()
    assert [r[0] for r in _column(browser, paper, 0)] == names[::-1]

    details = paper.find_element(By.TAG_NAME, "details")
    assert details.get_attribute("open") is None and not details.find_element(By.TAG_NAME, "pre").is_displayed()
    details.find_element(By.TAG_NAME, "summary").click()
    assert details.get_attribute("open") is not None and details.find_element(By.TAG_NAME, "pre").is_displayed()

    links = browser.execute_script("return Array.from(document.querySelectorAll('[href],[src]'),"
                                   " e => e.href || e.src);")
    assert links and not [u for u in links if urlparse(u).scheme not in ("file", "data")]
    files = [Path(unquote(urlparse(u).path)) for u in links if u.startswith("file:")]
    assert len(set(files)) == 11 + 2 and all(f.is_file() for f in files)  # 11 records and the two logs
    requested = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    assert not [u for u in requested if urlparse(u).scheme not in ("file", "data")]
    images = browser.execute_script("return Array.from(document.images, i => i.complete && i.naturalWidth);")
    assert len(images) == 4 and all(w > 100 for w in images)

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
    png = browser.get_screenshot_as_png()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert browser.save_screenshot(str(study / "report.png"))
    assert (study / "report.png").read_bytes().startswith(b"\x89PNG")


def test_leaderboard_page_in_headless_chromium(tmp_path, browser):
    from selenium.webdriver.common.by import By

    from segbench.report.leaderboard import build_leaderboard

    a = write_study(tmp_path / "A", study_records())
    b = write_study(tmp_path / "B", [record("r18", 5, {"gta": 50.0, "city": 99.0})])
    build_leaderboard([a, b], tmp_path / "board")
    browser.get((tmp_path / "board" / "leaderboard.html").resolve().as_uri())
    (table,) = browser.find_elements(By.CSS_SELECTOR, "table.sortable")
    table.find_elements(By.TAG_NAME, "th")[4].click()  # train gta / test city, highest first, r50's dash last
    rows = browser.execute_script("return Array.from(arguments[0].tBodies[0].rows, r => [r.cells[0].textContent,"
                                  " r.cells[1].getAttribute('data-sort')]);", table)
    by_mean = sorted(CITY, key=lambda k: statistics.fmean(CITY[k]), reverse=True)
    assert rows == [["B", "r18"]] + [["A", k] for k in by_mean] + [["A", "r50"]]
    summary = table.find_element(By.TAG_NAME, "summary")  # the row's name opens its card, config and cells
    summary.click()
    assert summary.text == "r18" and "crop: [768, 768]" in table.find_element(By.CSS_SELECTOR, "details[open]").text
    links = browser.execute_script("return Array.from(document.querySelectorAll('a'), e => e.href);")
    files = {Path(unquote(urlparse(u).path)) for u in links}
    assert files == {p.resolve() for study in (a, b) for p in study.glob("cells/*/record.json")}
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []

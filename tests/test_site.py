"""The built site, as a reader sees it: pages load, formulas are typeset, nothing is
fetched from outside.

Builds the book from the committed notebook outputs (zero warnings allowed), serves it
on 127.0.0.1 and opens every page of the table of contents in headless Chromium
(Debian's ``chromium``; ``make test`` installs it) driven by Playwright.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytestmark = pytest.mark.site

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def toc_pages() -> list[str]:
    """Every document of ``_toc.yml``, in book order, as paths relative to the site root
    (``.html``)."""
    return [
        f"{doc}.html"
        for doc in re.findall(r"(?:root|file): (\S+)", (ROOT / "_toc.yml").read_text())
    ]


def notebook_pages() -> list[str]:
    return [
        page for page in toc_pages() if (ROOT / page).with_suffix(".ipynb").exists()
    ]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [
            str(jupyter_book),
            "build",
            str(ROOT),
            "-W",
            "-n",
            "--keep-going",
            "--path-output",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    log = result.stdout + result.stderr
    warnings = [
        line for line in log.splitlines() if "WARNING" in line or "ERROR" in line
    ]
    assert result.returncode == 0 and "build succeeded." in log, (
        "\n".join(warnings) or log[-3000:]
    )
    assert not warnings, "\n".join(warnings)
    return out / "_build" / "html"


@pytest.fixture(scope="module")
def base_url(site):
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=site)
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    chromium = (
        os.environ.get("BOOK_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    if chromium is None:
        message = (
            "Debian's chromium is needed for the site test: "
            "`make test` installs it (apt-get install chromium)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser, base_url):
    """Open a site page; returns (page, urls it requested)."""
    opened = []

    def _open(path: str):
        page = browser.new_page()
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        response = page.goto(f"{base_url}/{path}", wait_until="networkidle")
        assert response is not None and response.ok, (
            f"{path}: HTTP {response and response.status}"
        )
        opened.append(page)
        return page, requested

    yield _open
    for page in opened:
        page.close()


@pytest.mark.parametrize("path", toc_pages())
def test_page_loads_typesets_math_and_stays_local(open_page, path):
    page, requested = open_page(path)
    assert page.locator("main h1").count() >= 1, f"{path} has no title"
    # MathJax (bundled, offline) typesets every formula
    if page.locator(".math").count():
        page.wait_for_function(
            "() => document.querySelectorAll('mjx-container').length > 0",
            timeout=15_000,
        )
        assert page.locator("mjx-merror").count() == 0, (
            f"{path}: MathJax reported a TeX error"
        )
    assert "Traceback (most recent call last)" not in page.content(), (
        f"{path} shows an error output"
    )
    outside = sorted(
        {
            url
            for url in requested
            if urlparse(url).scheme in ("http", "https", "ws", "wss")
            and urlparse(url).hostname != "127.0.0.1"
        }
    )
    assert not outside, (
        f"{path} requested resources from outside the machine: {outside}"
    )


@pytest.mark.parametrize("path", notebook_pages())
def test_chapter_has_math_colab_button_and_hidden_solutions(open_page, path):
    page, _ = open_page(path)
    page.wait_for_function(
        "() => document.querySelectorAll('mjx-container').length > 0", timeout=15_000
    )
    colab = page.locator('a[href*="colab.research.google.com/github/"]')
    assert colab.count() >= 1, f"{path} has no 'open in Colab' launch button"
    solutions = page.locator("div.solution")
    assert solutions.count() >= 1, f"{path} has no exercise solutions"
    body = solutions.first.locator("> :not(.admonition-title)").first
    assert not body.is_visible(), f"{path}: a solution is visible before it is clicked"
    solutions.first.locator("button.toggle-button").click()
    body.wait_for(state="visible", timeout=5_000)


def test_bibliography_lists_the_corrected_references(open_page):
    page, _ = open_page("book/references.html")
    text = page.inner_text("main").lower()
    assert "attention is all you need" in text
    # NAACL 2019 (R3)
    assert (
        "north american chapter of the association for computational linguistics"
        in text
    )


#: Draws each character on a canvas in the page's font; a character no installed font
#: has is drawn as the same empty box as a code point that no font has.
DRAWS_A_GLYPH = """(chars) => {
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = 48;
  const g = canvas.getContext('2d');
  const font = getComputedStyle(document.querySelector('main')).fontFamily;
  const draw = (ch) => {
    g.clearRect(0, 0, 48, 48);
    g.font = `32px ${font}`;
    g.fillText(ch, 4, 36);
    return canvas.toDataURL();
  };
  const missing = draw(String.fromCodePoint(0x10FFFD));
  return chars.map((ch) => draw(ch) !== missing);
}"""


def test_glossary_chinese_terms_render(open_page):
    page, _ = open_page("book/06_reference/03_glossary.html")
    chinese = sorted(set(re.findall(r"[\u4e00-\u9fff]", page.inner_text("main"))))
    assert len(chinese) >= 50, "the glossary should list the Chinese terms"
    drawn = page.evaluate(DRAWS_A_GLYPH, chinese + ["A"])
    assert drawn[-1], "the glyph check itself is broken: it cannot draw a Latin A"
    missing = [ch for ch, ok in zip(chinese, drawn) if not ok]
    assert not missing, (
        f"{len(missing)} Chinese characters render as empty boxes, e.g. "
        f"{''.join(missing[:10])}: install a CJK font (`make chromium` does)"
    )

"""Fixtures for the browser tests: the built site on 127.0.0.1 and Debian's chromium.

Playwright drives ``/usr/bin/chromium`` (never ``playwright install``, which downloads a
browser). Every test here is marked ``browser`` so ``make test-fast`` can skip them.
"""

from __future__ import annotations

import functools
import http.server
import socketserver
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The built site; COURSE_SITE points the tests at another build (e.g. one made with
#: ``jupyter-book build book --path-output DIR`` while `make` owns book/_build).
SCREENSHOTS = ROOT / "build" / "screenshots"
from site_pages import CHROMIUM, CHROMIUM_ARGS, SITE  # noqa: E402


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/browser" in str(item.fspath):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail("browser tests need /usr/bin/chromium (make browser-deps installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def site_url():
    if not (SITE / "index.html").is_file():
        pytest.fail(f"no built site at {SITE}: run `make course` first")
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler) as httpd:
        httpd.daemon_threads = True
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
        httpd.shutdown()


@pytest.fixture(scope="session")
def screenshots():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS

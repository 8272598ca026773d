"""The gallery in a real browser: `streamlit run ui.py` on a free localhost port, Debian's chromium
driven by Playwright, Generate clicked, the sample grid shown, a screenshot saved.

VAEGEN_UPDATE_SCREENSHOT=1 also writes the screenshot to docs/img/gallery.png (the README's picture);
VAEGEN_SCREENSHOT_BEST_DIR=DIR shows the models in DIR instead of an untrained test model.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next((path for path in ["/usr/bin/chromium", shutil.which("chromium")] if path and Path(path).is_file()), None)

if CHROMIUM is None:
    pytest.skip(
        "no chromium browser: install it with `apt-get install chromium` (scripts/test.sh does when it runs as root)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with code {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"streamlit did not answer {url}/_stcore/health within {timeout} s:\n{log.read_text()}")


@pytest.fixture
def gallery_url(tmp_path, make_run):
    best = os.environ.get("VAEGEN_SCREENSHOT_BEST_DIR")
    if best is None:
        best = tmp_path / "best"
        make_run(best, "apples-cvae", conditional="onehot", fid=45.678)
    port = free_port()
    log = tmp_path / "streamlit.log"
    env = {key: value for key, value in os.environ.items() if key != "VAEGEN_BEST_DIR"}  # --best-dir decides
    with log.open("w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "ui.py", "--server.headless", "true", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--", "--best-dir", str(best)],
            cwd=REPO, stdout=output, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def test_generate_in_a_real_browser(gallery_url, tmp_path):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(gallery_url)
            page.get_by_role("button", name="Generate").click(timeout=60_000)
            grid = page.get_by_alt_text("samples, seed 0")  # the caption is the picture's alt text
            grid.wait_for(state="visible", timeout=60_000)
            # a decoded picture, not a broken-image icon: the PNG arrived and has the enlarged grid's size
            size = grid.evaluate("img => img.complete ? [img.naturalWidth, img.naturalHeight, img.clientWidth] : [0, 0, 0]")
            assert size[0] >= 256 and size[1] >= 256, size
            assert size[2] <= size[0], size  # shown at most at its own size: a browser's stretching blurs the pixels
            assert page.get_by_role("button", name="Download PNG").first.is_visible()

            # all classes: a labelled block per class, 16 samples wrapping after 8 columns; once one long
            # row per class, which the column shrank to tiles of about 30 px
            page.get_by_test_id("stSelectbox").click()
            page.get_by_role("option", name="all classes").click()
            page.get_by_role("button", name="Generate").click()
            blocks = page.get_by_alt_text("16 samples per class, seed 0")
            blocks.wait_for(state="visible", timeout=60_000)
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=blocks.element_handle())
            natural, shown = blocks.evaluate("img => [[img.naturalWidth, img.naturalHeight], [img.clientWidth, img.clientHeight]]")
            assert natural[1] > natural[0] / 2, natural  # three blocks of two rows: no longer a strip
            rows_on_screen = 3 * 2
            assert shown[1] / rows_on_screen >= 64, shown  # tiles (with their padding) at least 64 px tall on screen
            page.wait_for_timeout(500)  # let the sidebar and fonts settle for the picture
            shot = tmp_path / "gallery.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("VAEGEN_UPDATE_SCREENSHOT") == "1":
        target = REPO / "docs" / "img" / "gallery.png"
        shutil.copyfile(shot, target)

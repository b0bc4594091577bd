"""The A/B app: the real page in Debian's Chromium driven by Playwright (headless; the app runs in a subprocess
on the embedded demo model, with few steps at 64x64). Its ratio sweep is tested in test_lab_sweep.py."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


# ---------------------------------------------------------------- the page, in a browser

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class App:
    url: str
    process: subprocess.Popen


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """``python -m ui`` as a user starts it: the embedded demo model, default host; offline, empty hub cache."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT),
           "HF_HUB_CACHE": str(tmp_path_factory.mktemp("hub-cache"))}
    process = subprocess.Popen([sys.executable, "-m", "ui", "--port", str(port)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the app did not start"
            time.sleep(0.5)
    yield App(url, process)
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the browser tests need Debian's Chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser, app):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app.url)
    page.wait_for_selector("#run")
    yield page
    page.close()


def _set(page, elem_id: str, value: str) -> None:
    page.fill(f"#{elem_id} input, #{elem_id} textarea", value)


def _tiny_settings(page, steps: int = 2) -> None:
    """Few steps at 64x64 pixels: the demo model's U-Net then attends over 32x32 tokens."""
    _set(page, "steps", str(steps))
    _set(page, "width", "64")
    _set(page, "height", "64")


def _status(page, text: str, timeout: float = 180_000) -> str:
    page.wait_for_function(f"document.querySelector('#status').innerText.includes({text!r})", timeout=timeout)
    return page.inner_text("#status")


def _progress(page) -> int:
    """The step count shown by the page's progress bar (e.g. 17 for "17/400 steps")."""
    page.wait_for_function("/\\d+\\/400 steps/.test(document.querySelector('#status').innerText)", timeout=60_000)
    return int(re.search(r"(\d+)/400 steps", page.inner_text("#status"))[1])


def test_the_app_listens_on_localhost_only(app):
    import psutil

    port = int(app.url.rsplit(":", 1)[1])
    listening = [c.laddr.ip for c in psutil.Process(app.process.pid).net_connections() if c.status == "LISTEN"
                 and c.laddr.port == port]
    assert listening == ["127.0.0.1"]


def test_a_comparison_shows_images_numbers_and_chart(page, tmp_path):
    _tiny_settings(page)
    page.click("#run")
    _status(page, "Done")
    assert page.locator("#gallery img").count() == 4  # ratios 0, 0.3, 0.5, 0.7
    assert page.locator("#diffs img").count() == 4
    rows = page.locator("#table tbody tr").all_inner_texts()
    assert [row.split("\t")[0] for row in rows] == ["0", "0.3", "0.5", "0.7"]
    assert "1.00x" in rows[0] and "inf" in rows[0]
    for row in rows:
        seconds, its = (float(cell) for cell in row.split("\t")[1:3])
        assert seconds > 0 and its > 0
    assert page.locator("#chart img, #chart svg, #chart canvas").count() >= 1
    page.wait_for_function(  # the browser has decoded every image: 64x64 generations, a non-empty chart
        "Array.from(document.querySelectorAll('#gallery img, #diffs img, #chart img'))"
        ".every(i => i.complete && i.naturalWidth > 0) && document.querySelectorAll('#gallery img').length === 4"
    )
    assert set(page.eval_on_selector_all("#gallery img", "els => els.map(i => i.naturalWidth)")) == {64}
    page.screenshot(path=tmp_path / "app.png", full_page=True)
    assert (tmp_path / "app.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("width", "30", "width=30 must be a positive multiple of 8"),
        ("prompt", "   ", "the prompt is empty"),
        ("steps", "0", "steps=0 is out of range"),
        ("model", "/no/such/model", "model '/no/such/model' not found"),
    ],
)
def test_bad_input_is_reported_in_the_page_and_the_app_keeps_working(page, field, value, message):
    _tiny_settings(page, steps=1)
    _set(page, field, value)
    page.click("#run")
    assert "Error" in _status(page, message)
    assert page.locator("#gallery img").count() == 0


def test_a_long_comparison_can_be_cancelled_and_the_next_one_runs(page):
    _tiny_settings(page, steps=400)  # 4 ratios x 400 steps: minutes of work if Stop did nothing
    page.click("#run")
    _progress(page)
    page.click("#stop")
    status = _status(page, "Cancelled.", timeout=30_000)  # said by the run itself once it has stopped
    page.wait_for_function("document.querySelector('#stop-note').innerText.includes('Stop requested')")
    assert "Error" not in status and "Done" not in status
    assert page.locator("#gallery img").count() == 0
    _tiny_settings(page, steps=1)
    page.click("#run")
    assert "Done" in _status(page, "Done", timeout=60_000)
    assert page.locator("#gallery img").count() == 4
    assert "Stop requested" not in page.inner_text("#stop-note")  # a new run clears the note


def test_a_single_file_model_asks_for_its_configs_then_runs_with_them(page, tiny_pipeline_dir, tmp_path):
    import ldm_checkpoint
    from safetensors.torch import save_file

    from tomesd.lab.loading import load_pipeline

    path = tmp_path / "community-model.safetensors"
    save_file(ldm_checkpoint.ldm_state_dict(load_pipeline(tiny_pipeline_dir)), str(path))
    _tiny_settings(page, steps=1)
    _set(page, "model", str(path))
    page.click("#run")
    assert "Pass config=" in _status(page, "Error", timeout=60_000)  # offline, nothing cached: says what to pass
    _set(page, "config", str(tiny_pipeline_dir))
    page.click("#run")
    _status(page, "Done", timeout=60_000)
    assert page.locator("#gallery img").count() == 4


def test_queued_runs_wait_and_stop_acts_on_its_own_page_only(browser, app, page):
    _tiny_settings(page, steps=400)
    page.click("#run")
    _progress(page)
    other = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        other.goto(app.url)
        other.wait_for_selector("#run")
        _tiny_settings(other, steps=1)
        other.click("#run")
        _status(other, "queue", timeout=30_000)  # one generation at a time: it waits for the first page's run
        other.click("#stop")  # cancels the waiting run of this page, not the running one of the first
        before = _progress(page)
        time.sleep(2)
        assert _progress(page) > before and "Cancelled" not in page.inner_text("#status")
        page.click("#stop")
        _status(page, "Cancelled.", timeout=30_000)
        _status(other, "Cancelled.", timeout=30_000)  # its turn came; it stopped before loading anything
        assert other.locator("#gallery img").count() == 0
        other.click("#run")  # the earlier Stop does not cancel a new run
        assert "Done" in _status(other, "Done", timeout=60_000)
        assert other.locator("#gallery img").count() == 4
    finally:
        other.close()

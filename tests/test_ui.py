"""The A/B app: the real page in Debian's Chromium driven by Playwright (headless; the app runs in a subprocess
on the embedded demo model, with few steps at 64x64). Its ratio sweep is tested in test_lab_sweep.py."""

from __future__ import annotations

import json
import math
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


def _serve(tmp_path_factory, *flags: str):
    """``python -m ui`` as a user starts it, with ``flags``: the embedded demo model, default host; offline,
    empty hub cache. Yields the running :class:`App`."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT),
           "HF_HUB_CACHE": str(tmp_path_factory.mktemp("hub-cache"))}
    process = subprocess.Popen([sys.executable, "-m", "ui", "--port", str(port), *flags],
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
def app(tmp_path_factory):
    yield from _serve(tmp_path_factory)


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


# ---------------------------------------------------------------- the server through its API (gradio_client)

#: The API server's limits: a small pixel limit (so a flag is seen to change it), and a time budget that
#: ends a run nobody stops (the abandoned-run test asserts a much quicker start than this budget).
API_FLAGS = ("--max-pixels", "16384", "--max-steps", "2000", "--max-seconds", "30", "--compile-backend", "eager")
#: The patch options after "timed runs per ratio" and "compile", in the page's order, at their defaults.
DEFAULT_OPTIONS = {"max_downsample": "auto", "min_tokens": 1024, "sx": 2, "sy": 2, "use_rand": True, "merge_attn": True,
                   "merge_crossattn": False, "merge_mlp": True, "seed": 0, "kv_downsample": 1, "matching": "local"}
QUICK = {"model": "", "config": "", "prompt": "a red circle", "negative": "", "seed": 0, "steps": 1, "guidance": 5.0,
         "width": 64, "height": 64, "ratios": [0.0, 0.5], "repeats": 1, "compile": False}
#: About 2000 steps at 128 px: minutes of work on this machine unless something stops it.
LONG = {**QUICK, "steps": 1000, "width": 128, "height": 128}


def api_values(request: dict, **options) -> list:
    return [*request.values(), *{**DEFAULT_OPTIONS, **options}.values()]


@pytest.fixture(scope="module")
def api_app(tmp_path_factory):
    yield from _serve(tmp_path_factory, *API_FLAGS)


@pytest.fixture(scope="module")
def client(api_app):
    from gradio_client import Client

    return Client(api_app.url, verbose=False)


@pytest.mark.parametrize(
    "changes, options, message",
    [
        ({"guidance": None}, {}, "guidance is empty; accepted: a number of 0 or more"),
        ({"seed": 1e20}, {}, "seed=100000000000000000000 is out of range; accepted: whole numbers from 0 to "),
        ({}, {"sx": 64}, "patch option sx=64 is larger than the token grid at this size (width 64 px / 2 = 32 "
                         "tokens); accepted: 1 to 32"),
        ({"steps": None}, {}, "steps is empty; accepted: whole numbers from 1 to 1000"),
        ({"width": 100000}, {}, "width x height = 100000 x 64 = 6400000 pixels is over this server's limit of "
                                "16384 pixels per image (python -m ui --max-pixels changes it)"),
        ({"width": 8192, "height": 8192}, {}, "67108864 pixels is over this server's limit of 16384"),
        ({"width": 136, "height": 136}, {}, "18496 pixels is over this server's limit of 16384"),  # --max-pixels
        ({"steps": 1000, "repeats": 10**6, "ratios": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]}, {},
         "steps x timed runs x ratios = 1000 x 1000000 x 10 = 10000000000 denoising steps is over this server's "
         "limit of 2000 per request (python -m ui --max-steps changes it)"),
        ({"repeats": 0}, {}, "timed runs per ratio=0 is out of range; accepted: whole numbers from 1"),
    ],
    ids=["blank_guidance", "huge_seed", "stride_over_grid", "blank_steps", "wide", "huge", "over_flag", "steps_budget",
         "no_runs"],
)
def test_the_server_refuses_out_of_range_values_quickly_naming_the_field(client, changes, options, message):
    """The page's controls are no protection: the API takes any value, so the server function checks them."""
    start = time.monotonic()
    status = client.predict(*api_values({**QUICK, **changes}, **options), api_name="/run")[-1]
    assert time.monotonic() - start < 10  # refused before any work (a run of these would take minutes or fail)
    assert status.startswith("**Error:**") and message in status


def test_a_dit_pipeline_compares_compiled_with_the_compile_time_apart(client, zoo_dirs):
    """A Flux folder (its denoiser is pipe.transformer, no negative prompt, distilled guidance) at ratio 0
    (the patch does not merge DiTs on main), its transformer compiled with the server's backend ("eager")."""
    request = {**QUICK, "model": str(zoo_dirs("FluxPipeline")), "width": 32, "height": 32, "guidance": 3.5,
               "ratios": [0.0], "compile": True}
    *_, table, _, status = client.predict(*api_values(request), api_name="/run")
    assert status.startswith("Done") and "denoiser compiled (eager), compile time apart" in status
    header, _, row = table.splitlines()
    assert header.endswith("| compile (s) |") and row.startswith("| 0 |")
    assert float(row.split("|")[-2]) > 0


def test_a_ratio_the_strides_cap_is_shown_with_its_effective_ratio_in_the_table(client):
    """Through the server: at 64 px the demo U-Net's merging block has a 32x32 grid, so with 2x2 strides 0.9
    merges exactly 0.75 of its tokens (the same image as 0.75) and its row says so; 0.5 carries no note."""
    *_, table, _, status = client.predict(*api_values({**QUICK, "ratios": [0.0, 0.5, 0.9]}), api_name="/run")
    assert status.startswith("Done")
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert rows == ["0", "0.5", "0.9 (0.75 effective)"]


def test_a_video_pipeline_is_sent_to_tomesd_generate(client, zoo_dirs):
    request = {**QUICK, "model": str(zoo_dirs("AnimateDiffPipeline")), "width": 32, "height": 32}
    status = client.predict(*api_values(request), api_name="/run")[-1]
    assert status.startswith("**Error:** AnimateDiffPipeline makes videos") and "tomesd generate" in status


def test_an_abandoned_run_is_cancelled_and_the_next_users_run_starts_within_seconds(api_app, client):
    """A client that submits minutes of work and disconnects must not hold the one worker: Gradio marks its job
    dead when its event stream closes, and the run stops at its next step."""
    abandoner = subprocess.Popen([sys.executable, "-c", ABANDONER, api_app.url, json.dumps(api_values(LONG))],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert abandoner.stdout.readline().strip() == "running", abandoner.stderr.read()
    finally:
        abandoner.kill()
        abandoner.wait()
    start = time.monotonic()
    job = client.submit(*api_values(QUICK), api_name="/run")
    while job.status().code.name not in ("PROCESSING", "FINISHED"):
        assert time.monotonic() - start < 20, "the next run still waits for the abandoned one"
        time.sleep(0.1)
    assert "Done" in job.result(timeout=60)[-1]


#: Submits a long run, says "running" once the server reports progress of it, then waits to be killed.
ABANDONER = """
import json, sys, time
from gradio_client import Client
job = Client(sys.argv[1], verbose=False).submit(*json.loads(sys.argv[2]), api_name="/run")
while not any(p.index for p in job.status().progress_data or []):
    time.sleep(0.1)
print("running", flush=True)
time.sleep(600)
"""


def test_a_run_past_the_time_budget_stops_and_says_which_flag_changes_it(client):
    start = time.monotonic()
    status = client.predict(*api_values(LONG), api_name="/run")[-1]
    assert re.match(r"\*\*Stopped:\*\* stopped after \d+ s: over this server's time budget of 30 s per request "
                    r"\(python -m ui --max-seconds changes it\)", status), status
    assert time.monotonic() - start < 90  # the budget (30 s), its last step, and loading

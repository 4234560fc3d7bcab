"""The web page end to end in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Skips when Chromium or the ``playwright`` package is missing; CI installs both. Set
``BGMATTING_WEB_SCREENSHOT=docs/web.png`` to also save the photo-mode screenshot there, and
``BGMATTING_WEB_WEIGHTS=<weights>`` to serve real weights instead of the tiny random-weight model.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from importlib import resources
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("BGMATTING_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytest.importorskip("fastapi")

from bgmatting import Matter  # noqa: E402
from bgmatting.io import read_image  # noqa: E402
from bgmatting.models import MattingRefine  # noqa: E402
from bgmatting.web import build_server  # noqa: E402

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",  # a test-pattern webcam, no prompt
]
EXAMPLES = resources.files("bgmatting") / "assets" / "examples"


@pytest.fixture(scope="module")
def matter() -> Matter:
    weights = os.environ.get("BGMATTING_WEB_WEIGHTS")
    if weights:
        return Matter(weights, device="cpu")
    return Matter(MattingRefine("mobilenetv2", refine_sample_pixels=320).eval(), device="cpu")


@pytest.fixture(scope="module")
def server_url(matter):
    server, sock = build_server(matter, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1360, "height": 1000}, device_scale_factor=1)
        yield context
        context.close()


@pytest.fixture
def page(browser_context, server_url):
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server_url)
    yield page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def image_stats(page, selector: str) -> dict:
    """Size, source kind and mean of the red channel of an <img> on the page, read back through a canvas."""
    return page.evaluate("""(sel) => {
        const img = document.querySelector(sel);
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d');
        g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data;
        let sum = 0;
        for (let i = 0; i < d.length; i += 4) sum += d[i];
        return {w: img.naturalWidth, h: img.naturalHeight, scheme: img.src.split(':')[0],
                mime: img.src.slice(5, 14), mean: sum / (d.length / 4) / 255};
    }""", selector)


def test_photo_mode_with_the_example_pair(page, matter, tmp_path):
    page.click("#load-example")
    page.wait_for_function("document.body.dataset.photoResult === '768x576'", timeout=120_000)
    pha = image_stats(page, "#out-pha")
    assert (pha["w"], pha["h"], pha["scheme"], pha["mime"]) == (768, 576, "data", "image/png")
    # the page shows exactly the alpha the pipeline computes for the bundled pair
    expected = matter(read_image(EXAMPLES / "src.jpg"), read_image(EXAMPLES / "bgr.jpg")).pha
    assert abs(pha["mean"] - float(expected.mean())) < 2 / 255
    result = image_stats(page, "#out-result")
    assert (result["w"], result["h"]) == (768, 576)
    assert "Server" in page.text_content("#timing") and "ms" in page.text_content("#timing")
    assert page.get_attribute("#download", "download") == "bgmatting-foreground.png"
    assert page.get_attribute("#download", "href").startswith("data:image/png;base64,")
    assert not page.is_hidden("#compare")
    page.fill("#compare-slider", "30")
    assert "30%" in page.get_attribute("#compare-after", "style")

    # composite over a colour: the page asks again by itself
    page.check('input[name="output"][value="colour"]')
    page.wait_for_function("document.querySelector('#result-caption').textContent.includes('colour') && "
                           "document.querySelector('#download').download === 'bgmatting-composite.png'",
                           timeout=120_000)
    page.wait_for_function("!document.querySelector('#status').classList.contains('busy')", timeout=120_000)
    assert image_stats(page, "#out-result")["w"] == 768

    page.check('input[name="output"][value="fgr"]')
    page.wait_for_function("document.querySelector('#download').download === 'bgmatting-foreground.png'",
                           timeout=120_000)
    page.wait_for_function("!document.querySelector('#status').classList.contains('busy')", timeout=120_000)
    page.fill("#compare-slider", "50")
    page.evaluate("document.querySelector('#compare-slider').dispatchEvent(new Event('input'))")
    shot = tmp_path / "web.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    target = os.environ.get("BGMATTING_WEB_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


def test_photo_mode_shows_server_errors(page, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    good = Path(str(EXAMPLES / "bgr.jpg"))
    page.set_input_files("#file-src", str(bad))
    page.set_input_files("#file-bgr", str(good))
    page.wait_for_function("document.querySelector('#status').classList.contains('error')", timeout=60_000)
    assert "not a supported image" in page.text_content("#status")


def test_live_mode_with_a_fake_camera(page):
    page.click("#tab-live")
    assert page.is_visible("#live") and page.is_hidden("#photo")
    page.click("#live-start")
    page.wait_for_function("document.querySelector('#live-video').videoWidth > 0", timeout=30_000)
    page.wait_for_function("!document.querySelector('#live-capture').disabled")
    page.click("#live-capture")
    page.wait_for_function("Number(document.querySelector('#live-frames').textContent) >= 4", timeout=120_000)
    assert "error" not in page.get_attribute("#live-status", "class")
    fps = float(page.text_content("#live-fps"))
    assert fps > 0
    assert page.text_content("#live-latency").endswith("ms")
    w, h = (int(v) for v in page.text_content("#live-res").split("×"))
    assert w >= 160 and abs(w / h - 4 / 3) < 0.02
    result = page.evaluate("[document.querySelector('#live-result').naturalWidth, "
                           "document.querySelector('#live-result').src.slice(0, 5)]")
    assert result[0] == w and result[1] == "blob:"
    # at most one frame in flight: the page never sends ahead of the answers, so the server drops none
    assert page.text_content("#live-dropped") == "0"
    # slow round trips lower the resolution (the page's own rule, fed three slow answers)
    scale = page.evaluate("(() => { live.lastChange = -100; live.rtt = null;"
                          " for (let i = 0; i < 3; i++) live.adapt(900); return live.scale; })()")
    assert scale < 1
    page.wait_for_function(f"parseInt(document.querySelector('#live-res').textContent) < {w}", timeout=60_000)
    smaller = page.text_content("#live-res")
    sw, sh = (int(v) for v in smaller.split("×"))
    assert abs(sw / sh - w / h) < 0.02
    page.wait_for_function(f"document.querySelector('#live-result').naturalWidth === {sw}", timeout=60_000)
    page.click("#live-stop")
    assert page.is_enabled("#live-start")
    frames = int(page.text_content("#live-frames"))
    page.wait_for_timeout(500)
    assert int(page.text_content("#live-frames")) <= frames + 1

"""The web API (``bgmatting serve``) through FastAPI's TestClient: photo requests, errors, live WebSocket."""

from __future__ import annotations

import io
import json
import struct
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from bgmatting import BgMattingError, Matter  # noqa: E402
from bgmatting.models import MattingRefine  # noqa: E402
from bgmatting.web import create_app  # noqa: E402

from helpers import png_declaring  # noqa: E402

MAX_PIXELS = 1_000_000
MAX_UPLOAD_MB = 2


# --------------------------------------------------------------------------------------------- helpers

def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_pair(h: int = 48, w: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured background and the same view with a bright square on it (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    bgr = (rng.random((h, w, 3)) * 120 + 40).astype(np.uint8)
    src = bgr.copy()
    src[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = (230, 200, 40)
    return src, bgr


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def assert_json_error(r, status: int, *words: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in r.text
    for word in words:
        assert word.lower() in body["error"].lower(), body["error"]
    return body


class SlowMatter(Matter):
    """The same model, with a pause in every forward pass and a record of how many ran at once."""

    def __init__(self, base: Matter, delay: float):
        self.__dict__.update(base.__dict__)
        self.delay, self.active, self.max_active, self.calls = delay, 0, 0, 0
        self.entered = threading.Event()
        self._count_lock = threading.Lock()

    def forward_tensors(self, src, bgr, **options):
        with self._count_lock:
            self.active += 1
            self.calls += 1
            self.max_active = max(self.max_active, self.active)
        self.entered.set()
        try:
            time.sleep(self.delay)
            return super().forward_tensors(src, bgr, **options)
        finally:
            with self._count_lock:
                self.active -= 1


@pytest.fixture(scope="module")
def matter() -> Matter:
    return Matter(MattingRefine("mobilenetv2", refine_sample_pixels=320).eval(), device="cpu")


@pytest.fixture(scope="module")
def client(matter):
    with TestClient(create_app(matter, max_upload_mb=MAX_UPLOAD_MB, max_pixels=MAX_PIXELS)) as c:
        yield c


@pytest.fixture(scope="module")
def pair():
    return make_pair()


def post(client, src: bytes, bgr: bytes, **data):
    files = {"src": ("src.png", src, "image/png"), "bgr": ("bgr.png", bgr, "image/png")}
    if "target" in data:
        files["target"] = ("target.png", data.pop("target"), "image/png")
    return client.post("/api/matte", files=files, data=data)


# --------------------------------------------------------------------------------------------- good requests

def test_alpha_png_matches_the_pipeline(client, matter, pair):
    src, bgr = pair
    r = post(client, png(src), png(bgr), output="pha")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert float(r.headers["x-process-time"]) > 0
    assert "matte;dur=" in r.headers["server-timing"]
    img = decode(r.content)
    assert img.mode == "L" and img.size == (64, 48)
    pha = np.asarray(img, dtype=np.float32) / 255
    expected = matter(src, bgr).pha
    assert np.isfinite(pha).all() and pha.min() >= 0 and pha.max() <= 1
    assert np.abs(pha - expected).max() <= 1 / 255 + 1e-6  # exactly what Matter gives, rounded to 8 bits


@pytest.mark.parametrize("output,extra,mode", [
    ("pha", {}, "L"),
    ("fgr", {}, "RGB"),
    ("com", {}, "RGBA"),                       # foreground on transparency
    ("composite", {"colour": "#00ff00"}, "RGB"),
    ("com", {"colour": "10,20,30"}, "RGB"),
    ("err", {}, "L"),
    ("ref", {}, "L"),
    ("mask", {}, "L"),
])
def test_each_output_has_the_source_size(client, pair, output, extra, mode):
    src, bgr = pair
    r = post(client, png(src), png(bgr), output=output, **extra)
    assert r.status_code == 200, r.text
    img = decode(r.content)
    assert img.size == (64, 48) and img.mode == mode


def test_composite_over_colour_and_image(client, matter, pair):
    src, bgr = pair
    result = matter(src, bgr)
    r = post(client, png(src), png(bgr), output="com", colour="#102030")
    com = np.asarray(decode(r.content), dtype=np.float32) / 255
    assert np.abs(com - result.composite("#102030")).max() <= 1 / 255 + 1e-6
    target = np.full((30, 90, 3), 200, np.uint8)  # another size and aspect: scaled to cover the frame
    r = post(client, png(src), png(bgr), output="com", target=png(target))
    assert r.status_code == 200, r.text
    com = np.asarray(decode(r.content), dtype=np.float32) / 255
    assert com.shape == (48, 64, 3)
    assert np.abs(com - result.composite(np.full((48, 64, 3), 200 / 255, np.float32))).max() <= 2 / 255


def test_several_outputs_come_as_json(client, pair):
    src, bgr = pair
    r = post(client, jpeg(src), jpeg(bgr), output="pha,com,fgr")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert (body["width"], body["height"]) == (64, 48)
    assert set(body["timing"]) == {"queue_ms", "decode_ms", "matte_ms", "encode_ms", "total_ms"}
    assert set(body["outputs"]) == {"pha", "com", "fgr"}
    import base64

    for url in body["outputs"].values():
        assert url.startswith("data:image/png;base64,")
        assert decode(base64.b64decode(url.split(",", 1)[1])).size == (64, 48)
    r = post(client, png(src), png(bgr), output="pha", format="json")
    assert set(r.json()["outputs"]) == {"pha"}


def test_background_of_another_size_with_the_same_view_is_resized(client, pair):
    src, bgr = pair
    big_bgr = np.asarray(Image.fromarray(bgr).resize((128, 96)))
    r = post(client, png(src), png(big_bgr), output="pha")
    assert r.status_code == 200 and decode(r.content).size == (64, 48)


def test_the_background_shot_is_aligned_unless_told_not_to(client, pair, monkeypatch):
    # as `bgmatting matte`: hand-held shots are aligned by default, `align=false` uses the shot as it is
    import bgmatting.web.photo as photo

    calls = []
    real = photo.align_background

    def counting(bgr, src, **options):
        calls.append(bgr.shape[:2])
        return real(bgr, src, **options)

    monkeypatch.setattr(photo, "align_background", counting)
    src, bgr = pair
    big_bgr = np.asarray(Image.fromarray(bgr).resize((128, 96)))
    assert post(client, png(src), png(big_bgr), output="pha").status_code == 200
    assert calls == [(48, 64)]  # resized to the photo first
    assert post(client, png(src), png(bgr), output="pha", align="false").status_code == 200
    assert calls == [(48, 64)]
    assert_json_error(post(client, png(src), png(bgr), output="pha", align="sometimes"), 422, "align")


def test_example_pair_end_to_end(client):
    src = client.get("/api/example/src")
    bgr = client.get("/api/example/bgr")
    assert src.status_code == bgr.status_code == 200
    assert src.headers["content-type"] == "image/jpeg"
    assert decode(src.content).size == decode(bgr.content).size == (768, 576)
    r = client.post("/api/matte", files={"src": ("s.jpg", src.content, "image/jpeg"),
                                         "bgr": ("b.jpg", bgr.content, "image/jpeg")}, data={"output": "pha"})
    assert r.status_code == 200 and decode(r.content).size == (768, 576)


def test_client_file_names_are_ignored(client, pair, tmp_path):
    src, bgr = pair
    files = {"src": ("../../../../tmp/evil.png", png(src), "image/png"),
             "bgr": ("/etc/passwd", png(bgr), "text/plain")}  # the content decides, not the name or type
    r = client.post("/api/matte", files=files, data={"output": "pha"})
    assert r.status_code == 200


# --------------------------------------------------------------------------------------------- bad requests

def test_missing_fields(client, pair):
    src, _ = pair
    body = assert_json_error(client.post("/api/matte", files={"src": ("s.png", png(src), "image/png")}), 422, "bgr")
    assert body["details"][0]["field"] == "bgr"
    assert_json_error(client.post("/api/matte", files={"bgr": ("b.png", png(src), "image/png")}), 422, "src")
    assert_json_error(client.post("/api/matte"), 422, "missing")
    assert_json_error(client.post("/api/matte", data={"src": "not a file", "bgr": "x"}), 422)


def gif(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="GIF")
    return buf.getvalue()


@pytest.mark.parametrize("case,status,words", [
    ("text", 415, ["not a supported image"]),
    ("gif", 415, ["png, jpeg"]),
    ("html", 415, []),
    ("empty", 422, ["empty"]),
    ("truncated_png", 422, ["truncated"]),
    ("truncated_jpeg", 422, ["truncated"]),
    ("garbage_after_signature", 422, ["corrupt"]),
    ("too_many_pixels", 413, ["megapixels"]),
    ("decompression_bomb", 413, []),
])
def test_bad_source_files(client, pair, case, status, words):
    src, bgr = pair
    data = {
        "text": lambda: b"hello, I am not an image",
        "gif": lambda: gif(src),
        "html": lambda: b"<html><script>alert(1)</script></html>",
        "empty": lambda: b"",
        "truncated_png": lambda: png(src)[:200],
        "truncated_jpeg": lambda: jpeg(src)[:400],
        "garbage_after_signature": lambda: b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20,
        "too_many_pixels": lambda: png_declaring(1500, 1000),       # 1.5 MP > the 1 MP limit
        "decompression_bomb": lambda: png_declaring(40000, 40000),  # 1.6 GP declared in a few bytes
    }[case]()
    r = post(client, data, png(bgr), output="pha")
    assert_json_error(r, status, *words)


def test_mismatched_sizes(client, pair):
    src, bgr = pair
    r = post(client, png(src), png(np.ascontiguousarray(bgr.transpose(1, 0, 2))), output="pha")
    assert_json_error(r, 422, "64x48", "48x64", "same view")


@pytest.mark.parametrize("data,words", [
    ({"output": "alpha"}, ["unknown output", "alpha"]),
    ({"output": " , "}, ["none given"]),
    ({"output": "com", "colour": "greenish"}, ["not a colour"]),
    ({"output": "pha", "format": "xml"}, ["format"]),
    ({"output": "pha,com", "format": "png"}, ["one output"]),
])
def test_bad_options(client, pair, data, words):
    src, bgr = pair
    assert_json_error(post(client, png(src), png(bgr), **data), 422, *words)


def test_colour_and_target_together(client, pair):
    src, bgr = pair
    r = post(client, png(src), png(bgr), output="com", colour="#ffffff", target=png(bgr))
    assert_json_error(r, 422, "either")
    assert_json_error(post(client, png(src), png(bgr), output="com", target=b"nope"), 415, "target")


def test_upload_over_the_limit(client, pair):
    _, bgr = pair
    noise = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)  # ~3 MB as PNG
    big = png(noise)
    assert len(big) > MAX_UPLOAD_MB * 2 ** 20
    assert_json_error(post(client, big, png(bgr)), 413, "limit")


def test_streamed_upload_over_the_limit(client):
    def chunks():  # no Content-Length: the server counts while it reads
        for _ in range(MAX_UPLOAD_MB * 4 + 1):
            yield b"x" * 2 ** 18
    r = client.post("/api/matte", content=chunks(),
                    headers={"content-type": "multipart/form-data; boundary=abc"})
    assert_json_error(r, 413)


def test_errors_inside_the_model_are_json_without_trace(matter, pair):
    class Broken(Matter):
        def __init__(self):
            self.__dict__.update(matter.__dict__)

        def forward_tensors(self, src, bgr, **options):
            raise RuntimeError("secret internals /home/user/x.py line 3")

    src, bgr = pair
    with TestClient(create_app(Broken()), raise_server_exceptions=False) as c:
        r = post(c, png(src), png(bgr))
    body = assert_json_error(r, 500, "internal error")
    assert "secret" not in body["error"]


# --------------------------------------------------------------------------------------------- other endpoints

def test_the_served_model_is_described_with_the_scale_the_user_gave_when_it_supersamples(tmp_path):
    from bgmatting.web.app import describe_matter
    from bgmatting.weights import save_weights

    path = save_weights(MattingRefine("mobilenetv2", refine_sample_pixels=320).eval(), tmp_path / "m.safetensors")
    info = describe_matter(Matter(path, device="cpu", backbone_scale=0.75, refine_sample_pixels=400))
    assert (info["backbone_scale"], info["refine_sample_pixels"]) == (0.75, 400)
    info = describe_matter(Matter(path, device="cpu", backbone_scale=0.5, refine_sample_pixels=400))
    assert (info["backbone_scale"], info["refine_sample_pixels"]) == (0.5, 400)


def test_health_models_page_and_docs(client):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["model"]["architecture"] == "MattingRefine"
    assert h["model"]["backbone"] == "mobilenetv2" and h["device"] == "cpu"
    assert {k: h["model"][k] for k in ("refine_mode", "refine_sample_pixels", "refine_prevent_oversampling")} == {
        "refine_mode": "sampling", "refine_sample_pixels": 320, "refine_prevent_oversampling": True}
    assert h["limits"] == {"max_upload_mb": MAX_UPLOAD_MB, "max_pixels": MAX_PIXELS, "max_queue": 8}
    m = client.get("/api/models").json()
    names = [x["name"] for x in m["models"]]
    assert "mobilenetv2" in names and sum(x["default"] for x in m["models"]) == 1
    assert m["active"]["architecture"] == "MattingRefine"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for ref in ("/static/app.js", "/static/style.css", 'id="load-example"', 'id="live-frames"'):
        assert ref in page.text
    for asset in ("app.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/matte", "/api/health", "/api/models"} <= set(paths)


@pytest.mark.parametrize("path", ["/api/example/weights", "/api/example/..%2F..%2Fpipeline.py",
                                  "/static/../app.py", "/static/..%2Fapp.py", "/nope"])
def test_no_path_reaches_other_files(client, path):
    r = client.get(path)
    assert r.status_code == 404
    assert "import" not in r.text


def test_host_check(matter):
    app = create_app(matter, allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app) as c:  # Host: testserver
        assert_json_error(c.get("/api/health"), 421)
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/health").status_code == 200
        live = "ws://127.0.0.1:8000/api/live"
        with c.websocket_connect(live, headers={"origin": "http://127.0.0.1:8000"}) as ws:
            assert ws.receive_json()["type"] == "hello"
        with pytest.raises(WebSocketDisconnect):
            with c.websocket_connect(live, headers={"origin": "http://evil.example"}) as ws:
                ws.receive_json()


def test_model_loads_lazily_and_load_errors_are_503(matter, pair):
    src, bgr = pair
    calls = []

    def factory():
        calls.append(1)
        return matter

    with TestClient(create_app(factory)) as c:
        assert c.get("/api/health").json()["model"] is None and not calls
        assert post(c, png(src), png(bgr), output="pha").status_code == 200
        assert post(c, png(src), png(bgr), output="pha").status_code == 200
        assert len(calls) == 1 and c.get("/api/health").json()["model"]["backbone"] == "mobilenetv2"

    def failing():
        raise BgMattingError("the weights of model 'mobilenetv2' are not included in this installation")

    with TestClient(create_app(failing)) as c:
        assert_json_error(post(c, png(src), png(bgr)), 503, "could not be loaded", "not included")


def test_create_app_checks_its_arguments(matter):
    with pytest.raises(TypeError):
        create_app("mobilenetv2")
    with pytest.raises(BgMattingError):
        create_app(matter, max_upload_mb=0)


# --------------------------------------------------------------------------------------------- concurrency

def test_concurrent_requests_run_one_at_a_time(matter, pair):
    src, bgr = pair
    slow = SlowMatter(matter, delay=0.15)
    with TestClient(create_app(slow)) as c:
        statuses = []

        def one():
            statuses.append(post(c, png(src), png(bgr), output="pha").status_code)

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert statuses == [200] * 4
    assert slow.calls == 4 and slow.max_active == 1


def test_queue_limit_answers_503(matter, pair):
    src, bgr = pair
    slow = SlowMatter(matter, delay=1.0)
    with TestClient(create_app(slow, max_queue=1)) as c:
        first = threading.Thread(target=lambda: post(c, png(src), png(bgr), output="pha"))
        first.start()
        assert slow.entered.wait(30)
        assert_json_error(post(c, png(src), png(bgr), output="pha"), 503, "busy")
        first.join(30)


# --------------------------------------------------------------------------------------------- live mode

def frame_msg(fid: int, data: bytes) -> bytes:
    return b"F" + struct.pack("<I", fid) + data


def receive_until(ws, predicate, limit: int = 50):
    """Messages (decoded JSON dicts, or ``(id, server_ms, image)`` tuples) up to the one ``predicate`` accepts."""
    seen = []
    for _ in range(limit):
        m = ws.receive()
        if m.get("bytes") is not None:
            data = m["bytes"]
            assert data[:1] == b"R"
            fid, ms = struct.unpack("<If", data[1:9])
            item = ("R", fid, ms, decode(data[9:]))
        else:
            item = json.loads(m["text"])
        seen.append(item)
        if predicate(item):
            return seen
    raise AssertionError(f"no matching message in {seen}")


def is_result(fid):
    return lambda item: isinstance(item, tuple) and item[1] == fid


def test_live_background_then_frames(client, pair):
    src, bgr = pair
    with client.websocket_connect("/api/live") as ws:
        hello = ws.receive_json()
        assert hello["type"] == "hello" and hello["max_pixels"] == MAX_PIXELS
        ws.send_bytes(b"B" + jpeg(bgr))
        assert ws.receive_json() == {"type": "background", "width": 64, "height": 48}
        for fid in (1, 2, 3):
            ws.send_bytes(frame_msg(fid, jpeg(src)))
            (_, rid, ms, img), = receive_until(ws, is_result(fid))
            assert rid == fid and ms > 0 and img.format == "JPEG" and img.size == (64, 48) and img.mode == "RGB"
        # a smaller frame (the page lowers the resolution when the round trip is slow): background follows
        small = np.asarray(Image.fromarray(src).resize((32, 24)))
        ws.send_bytes(frame_msg(4, jpeg(small)))
        assert receive_until(ws, is_result(4))[-1][3].size == (32, 24)
        ws.send_text(json.dumps({"type": "config", "output": "pha", "quality": 70}))
        assert ws.receive_json()["output"] == "pha"
        ws.send_bytes(frame_msg(5, jpeg(src)))
        assert receive_until(ws, is_result(5))[-1][3].mode == "L"


def test_live_composite_matches_the_colour(client, matter, pair):
    src, bgr = pair
    with client.websocket_connect("/api/live") as ws:
        ws.receive_json()
        ws.send_text(json.dumps({"type": "config", "output": "com", "colour": "#ff00ff"}))
        assert ws.receive_json() == {"type": "config", "output": "com", "colour": "#ff00ff", "quality": 80}
        ws.send_bytes(b"B" + png(bgr))
        ws.receive_json()
        ws.send_bytes(frame_msg(1, png(src)))
        img = np.asarray(receive_until(ws, is_result(1))[-1][3], dtype=np.float32) / 255
        expected = matter(src, bgr).composite("#ff00ff")
        assert np.abs(img - expected).mean() < 0.05  # JPEG
        ws.send_bytes(b"T" + png(np.zeros((10, 10, 3), np.uint8)))
        assert ws.receive_json()["type"] == "target"
        ws.send_bytes(frame_msg(2, png(src)))
        img = np.asarray(receive_until(ws, is_result(2))[-1][3], dtype=np.float32) / 255
        assert np.abs(img - matter(src, bgr).composite((0.0, 0.0, 0.0))).mean() < 0.05
        ws.send_text(json.dumps({"type": "clear_target"}))
        assert ws.receive_json()["type"] == "target"


def test_live_errors_keep_the_connection(client, pair):
    src, bgr = pair
    with client.websocket_connect("/api/live") as ws:
        ws.receive_json()
        ws.send_bytes(frame_msg(1, jpeg(src)))
        err = ws.receive_json()
        assert err["type"] == "error" and err["id"] == 1 and "background first" in err["message"]
        ws.send_bytes(b"B" + b"not an image")
        assert ws.receive_json()["type"] == "error"
        ws.send_bytes(b"B" + jpeg(bgr))
        assert ws.receive_json()["type"] == "background"
        ws.send_bytes(frame_msg(2, jpeg(np.ascontiguousarray(src.transpose(1, 0, 2)))))
        err = ws.receive_json()
        assert err["id"] == 2 and "background again" in err["message"]
        ws.send_bytes(frame_msg(3, jpeg(src)[:300]))
        assert ws.receive_json()["id"] == 3
        for fid, data, words in ((5, b"", "empty"), (6, b"GIF89a", "not a supported image"),
                                 (7, png_declaring(50_000, 50_000), "too large"), (2 ** 32 - 1, b"\xff\xd8\xff", "")):
            ws.send_bytes(frame_msg(fid, data))
            err = receive_reply(ws)
            assert err["type"] == "error" and err["id"] == fid and words in err["message"], err
        ws.send_bytes(b"Zzz")
        assert ws.receive_json()["type"] == "error"
        ws.send_text("{not json")
        assert ws.receive_json()["type"] == "error"
        ws.send_text(json.dumps({"type": "config", "output": "fgr"}))
        assert "output must be" in ws.receive_json()["message"]
        ws.send_text(json.dumps({"type": "config", "colour": "nope"}))
        assert "not a colour" in ws.receive_json()["message"]
        ws.send_bytes(frame_msg(4, jpeg(src)))
        assert receive_until(ws, is_result(4))[-1][3].size == (64, 48)


def strict_json(text: str):
    """``json.loads`` that refuses NaN and Infinity, as a browser's ``JSON.parse`` does."""
    def refuse(name):
        raise AssertionError(f"the server sent {name}, which is not JSON")
    return json.loads(text, parse_constant=refuse)


def receive_reply(ws) -> dict:
    m = ws.receive()
    assert m["type"] == "websocket.send" and m.get("text") is not None, m
    return strict_json(m["text"])


def check_open(ws, src, bgr) -> None:
    """The connection still answers a ping, a config and a frame."""
    ws.send_text(json.dumps({"type": "ping", "t": 7}))
    assert receive_reply(ws) == {"type": "pong", "t": 7}
    ws.send_text(json.dumps({"type": "config"}))
    assert receive_reply(ws)["type"] == "config"
    ws.send_bytes(b"B" + png(bgr))
    assert receive_reply(ws)["type"] == "background"
    ws.send_bytes(frame_msg(99, png(src)))
    assert receive_until(ws, is_result(99))[-1][3].size == (src.shape[1], src.shape[0])


def config(**fields) -> str:
    return json.dumps({"type": "config", **fields})


OVER = MAX_UPLOAD_MB * 2 ** 20 + 1  # one byte over the app's limit


@pytest.mark.parametrize("message,words", [
    (config(colour=123), "colour must be a string"),
    (config(colour=[0, 255, 0]), "not a list"),
    (config(colour=None), "not null"),
    (config(colour={"r": 0}), "not an object"),
    (config(colour=True), "not a boolean"),
    (config(colour=""), "not a colour"),
    (config(colour="#" + "f" * 5000), "not a colour"),
    (config(colour="300,0,0"), "not a colour"),
    (config(output=None), "output must be"),
    (config(output=["pha"]), "not a list"),
    (config(output={"pha": 1}), "output must be"),
    (config(output=1), "output must be"),
    (config(quality=True), "quality must be"),
    (config(quality="80"), "quality must be"),
    (config(quality=None), "quality must be"),
    (config(quality=[80]), "quality must be"),
    (config(quality=0), "quality must be"),
    (config(quality=101), "quality must be"),
    (config(quality=10 ** 400), "quality must be"),
    ('{"type": "config", "quality": NaN}', "not NaN"),
    ('{"type": "config", "quality": Infinity}', "not Infinity"),
    (json.dumps({"type": "ping", "t": "now"}), "must be a number"),
    ('{"type": "ping", "t": NaN}', "must be a number"),
    (json.dumps({"type": "ping", "t": [1]}), "must be a number"),
    (json.dumps({"type": "frame"}), "message type"),
    (json.dumps({"type": ["config"]}), "message type"),
    (json.dumps({"type": None}), "message type"),
    (json.dumps({"output": "pha"}), "message type"),
    (json.dumps([{"type": "config"}]), "json objects"),
    ("null", "json objects"),
    ("NaN", "json objects"),
    ("", "json objects"),
    ("\ud800", "json objects"),
    ("[" * 100_000, "json objects"),
    ('{"type": ' * 100_000, "json objects"),
    (json.dumps({"type": "config", "pad": "x" * OVER}), "over this server's limit"),
    (b"", "unknown binary message"),
    (b"F", "no id"),
    (b"F\x01\x02\x03", "no id"),
    (b"Q" + b"\x00" * 10, "unknown binary message"),
    (b"B", "empty"),
    (b"B" + b"\x89PNG\r\n\x1a\n", "png"),
    (b"T" + b"<svg/>", "not a supported image"),
    (b"B" + png_declaring(50_000, 50_000), "too large"),
    (b"B" + bytes(OVER - 1), "over this server's limit"),
    (frame_msg(5, b"\xff" * (OVER - 5)), "over this server's limit"),
], ids=lambda v: repr(v[:40]) if isinstance(v, (str, bytes)) else None)
def test_live_malformed_messages_get_an_error_and_keep_the_connection(client, pair, message, words):
    src, bgr = pair
    with client.websocket_connect("/api/live") as ws:
        ws.receive_json()
        ws.send_bytes(message) if isinstance(message, bytes) else ws.send_text(message)
        reply = receive_reply(ws)
        assert reply["type"] == "error" and words.lower() in reply["message"].lower(), reply
        assert "Traceback" not in reply["message"] and len(reply["message"]) < 300
        check_open(ws, src, bgr)


def test_live_config_is_all_or_nothing(client, pair):
    with client.websocket_connect("/api/live") as ws:
        ws.receive_json()
        ws.send_text(config(output="pha", colour="#ff0000", quality=50))
        good = receive_reply(ws)
        assert good == {"type": "config", "output": "pha", "colour": "#ff0000", "quality": 50}
        ws.send_text(config(output="com", colour="#00ff00", quality="high"))  # one bad field: nothing changes
        assert receive_reply(ws)["type"] == "error"
        ws.send_text(config())
        assert receive_reply(ws) == good
        ws.send_text(config(output="composite", colour=" 0, 0, 255 ", quality=99.9, unknown_key=[1]))
        assert receive_reply(ws) == {"type": "config", "output": "com", "colour": "#0000ff", "quality": 99}


def test_live_internal_errors_keep_the_connection(client, pair, monkeypatch):
    from bgmatting.web.live import LiveSession

    def broken(self, data):
        raise RuntimeError("a bug")

    src, bgr = pair
    with client.websocket_connect("/api/live") as ws:
        ws.receive_json()
        with monkeypatch.context() as m:
            m.setattr(LiveSession, "set_background", broken)
            ws.send_bytes(b"B" + png(bgr))
            reply = receive_reply(ws)
        assert reply["type"] == "error" and "internal error (RuntimeError)" in reply["message"]
        assert "a bug" not in reply["message"]
        check_open(ws, src, bgr)


def test_live_any_json_value_in_any_field_keeps_the_connection(client, pair):
    """Property: whatever JSON value a config field (or the type) holds, the answer is a config or an error, it
    is valid JSON, the config is accepted exactly when the value is valid, and the connection stays usable."""
    pytest.importorskip("hypothesis")
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from bgmatting.tensors import parse_colour

    scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
               | st.sampled_from(["com", "pha", "composite", "#00ff00", "#fff", "1,2,3", "config", "ping"]))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)

    def valid(field, value) -> bool:
        if field == "output":
            return isinstance(value, str) and value in ("com", "composite", "pha")
        if field == "quality":
            return (isinstance(value, (int, float)) and not isinstance(value, bool) and 1 <= value <= 100)
        try:
            parse_colour(value)
        except BgMattingError:
            return False
        return isinstance(value, str)

    src, bgr = pair
    with client.websocket_connect("/api/live") as ws:
        ws.receive_json()

        @settings(max_examples=200, deadline=None, derandomize=True, database=None)
        @given(field=st.sampled_from(["output", "colour", "quality", "type"]), value=values)
        def answers(field, value):
            ws.send_text(json.dumps({"type": value} if field == "type" else {"type": "config", field: value}))
            if field == "type" and value in ("clear_target", "ping"):
                assert receive_reply(ws)["type"] in ("target", "pong")
                return
            reply = receive_reply(ws)
            expected = "config" if (value == "config" if field == "type" else valid(field, value)) else "error"
            assert reply["type"] == expected, (field, value, reply)
            if expected == "config":
                assert reply["output"] in ("com", "pha") and 1 <= reply["quality"] <= 100
                assert len(reply["colour"]) == 7 and int(reply["colour"][1:], 16) >= 0
            else:
                assert isinstance(reply["message"], str) and 0 < len(reply["message"]) < 300

        answers()
        check_open(ws, src, bgr)


def test_live_message_size_limits_on_a_real_server(matter):
    """Over the app's limit: an error message; over twice that, the WebSocket server closes with 1009."""
    ws_client = pytest.importorskip("websockets.sync.client")
    from websockets.exceptions import ConnectionClosed

    from bgmatting.web import build_server
    from bgmatting.web.limits import ws_max_size

    server, sock = build_server(matter, "127.0.0.1", 0, max_upload_mb=0.01)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        limit = int(0.01 * 2 ** 20)
        assert server.config.ws_max_size == ws_max_size(limit) == 2 * limit
        url = f"ws://127.0.0.1:{sock.getsockname()[1]}/api/live"
        with ws_client.connect(url, compression=None, open_timeout=10) as ws:
            assert strict_json(ws.recv(timeout=10))["max_bytes"] == limit
            for message in (b"B" + bytes(limit), b"F" + bytes(2 * limit - 1), "x" * (limit + 1)):
                ws.send(message)
                reply = strict_json(ws.recv(timeout=10))
                assert reply["type"] == "error" and "over this server's limit" in reply["message"]
                ws.send(json.dumps({"type": "ping", "t": 1}))
                assert strict_json(ws.recv(timeout=10)) == {"type": "pong", "t": 1}
            ws.send(b"B" + bytes(2 * limit))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_live_drops_stale_frames(matter, pair):
    src, bgr = pair
    slow = SlowMatter(matter, delay=0.3)
    with TestClient(create_app(slow)) as c, c.websocket_connect("/api/live") as ws:
        ws.receive_json()
        ws.send_bytes(b"B" + jpeg(bgr))
        ws.receive_json()
        for fid in range(1, 7):  # a client that does not wait for answers
            ws.send_bytes(frame_msg(fid, jpeg(src)))
        seen = receive_until(ws, is_result(6))
    results = [item[1] for item in seen if isinstance(item, tuple)]
    dropped = [item["id"] for item in seen if isinstance(item, dict) and item["type"] == "dropped"]
    assert results[-1] == 6                      # the newest frame is always served
    assert len(results) <= 2 and len(dropped) >= 4
    assert sorted(results + dropped) == [1, 2, 3, 4, 5, 6]
    assert slow.calls == len(results) and slow.max_active == 1


# --------------------------------------------------------------------------------------------- serve

def test_serve_reports_a_busy_port_and_warns_off_loopback(matter):
    from bgmatting.web import build_server, serve
    from bgmatting.web.server import bind_socket

    busy = bind_socket("127.0.0.1", 0)
    port = busy.getsockname()[1]
    try:
        with pytest.raises(BgMattingError, match="another --port"):
            serve("127.0.0.1", port, matter=matter)
        with pytest.warns(UserWarning, match="no authentication"), pytest.raises(BgMattingError):
            serve("0.0.0.0", port, matter=matter)
        with pytest.raises(BgMattingError, match="not both"):
            serve("127.0.0.1", port, "model.pth", matter=matter)
    finally:
        busy.close()
    server, sock = build_server(matter, "127.0.0.1", 0)
    try:
        assert sock.getsockname()[1] > 0 and server.config.app is not None
    finally:
        sock.close()

/* bgmatting web page: photo mode (POST /api/matte) and live mode (WebSocket /api/live). No build step. */
"use strict";

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------------------------------ tabs & header

function showMode(mode) {
  for (const tab of document.querySelectorAll(".tab")) {
    const on = tab.dataset.mode === mode;
    tab.setAttribute("aria-selected", String(on));
    $(tab.dataset.mode).hidden = !on;
  }
  if (mode !== "live") live.stop();
}
for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showMode(tab.dataset.mode));

fetch("/api/health").then((r) => r.json()).then((h) => {
  const m = h.model;
  $("model-info").textContent = m ? `${m.architecture} · ${m.backbone || "?"} · ${m.device}` : "model loads on first use";
}).catch(() => { $("model-info").textContent = "server unreachable"; });

function setStatus(el, text, kind) {
  el.textContent = text;
  el.classList.toggle("error", kind === "error");
  el.classList.toggle("busy", kind === "busy");
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error || JSON.stringify(body);
  } catch (e) {
    return `${response.status} ${response.statusText}`;
  }
}

// ------------------------------------------------------------------------------------------ photo mode

const photo = { src: null, bgr: null, target: null, result: null, busy: false, again: false };

function setInput(which, blob, name) {
  photo[which] = blob && { blob, name: name || `${which}.png` };
  const img = $(`preview-${which}`);
  if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
  if (blob) {
    img.dataset.url = URL.createObjectURL(blob);
    img.src = img.dataset.url;
  }
  img.hidden = !blob;
  $(`drop-${which}`).classList.toggle("filled", !!blob);
  $("run").disabled = !(photo.src && photo.bgr);
}

for (const which of ["src", "bgr"]) {
  const input = $(`file-${which}`);
  const zone = $(`drop-${which}`);
  input.addEventListener("change", () => {
    if (input.files[0]) { setInput(which, input.files[0], input.files[0].name); maybeRun(); }
  });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) { setInput(which, file, file.name); maybeRun(); }
  });
}

function outputChoice() {
  return document.querySelector('input[name="output"]:checked').value;
}

$("file-target").addEventListener("change", () => {
  const f = $("file-target").files[0];
  photo.target = f ? { blob: f, name: f.name } : null;
  if (f) document.querySelector('input[name="output"][value="image"]').checked = true;
  maybeRun();
});
$("colour").addEventListener("input", () => {
  document.querySelector('input[name="output"][value="colour"]').checked = true;
});
$("colour").addEventListener("change", maybeRun);
for (const radio of document.querySelectorAll('input[name="output"]')) radio.addEventListener("change", maybeRun);

$("load-example").addEventListener("click", async () => {
  setStatus($("status"), "Loading the example pair…", "busy");
  try {
    const [src, bgr] = await Promise.all(["src", "bgr"].map(async (w) => {
      const r = await fetch(`/api/example/${w}`);
      if (!r.ok) throw new Error(await errorMessage(r));
      return r.blob();
    }));
    setInput("src", src, "example-src.jpg");
    setInput("bgr", bgr, "example-bgr.jpg");
    await runMatte();
  } catch (e) {
    setStatus($("status"), `Could not load the example: ${e.message}`, "error");
  }
});

$("run").addEventListener("click", runMatte);

function maybeRun() {
  if (photo.src && photo.bgr) runMatte();
}

async function runMatte() {
  if (!(photo.src && photo.bgr)) return;
  if (photo.busy) { photo.again = true; return; }  // one request at a time; rerun once with the latest choice
  photo.busy = true;
  $("run").disabled = true;
  const choice = outputChoice();
  const form = new FormData();
  form.append("src", photo.src.blob, photo.src.name);
  form.append("bgr", photo.bgr.blob, photo.bgr.name);
  form.append("output", choice === "pha" ? "pha" : "pha,com");
  form.append("format", "json");
  if (choice === "colour") form.append("colour", $("colour").value);
  if (choice === "image") {
    if (!photo.target) {
      setStatus($("status"), "Choose the image to composite over.", "error");
      photo.busy = false; $("run").disabled = false;
      return;
    }
    form.append("target", photo.target.blob, photo.target.name);
  }
  setStatus($("status"), "Matting…", "busy");
  const t0 = performance.now();
  try {
    const r = await fetch("/api/matte", { method: "POST", body: form });
    if (!r.ok) throw new Error(await errorMessage(r));
    const body = await r.json();
    const roundTrip = performance.now() - t0;
    showResult(body, choice, roundTrip);
  } catch (e) {
    setStatus($("status"), e.message, "error");
  } finally {
    photo.busy = false;
    $("run").disabled = !(photo.src && photo.bgr);
    if (photo.again) { photo.again = false; runMatte(); }
  }
}

const CAPTIONS = { pha: "Alpha matte", fgr: "Foreground on transparency", colour: "Composite over a colour",
                   image: "Composite over your image" };
const FILENAMES = { pha: "alpha", fgr: "foreground", colour: "composite", image: "composite" };

function showResult(body, choice, roundTrip) {
  const result = choice === "pha" ? body.outputs.pha : body.outputs.com;
  $("out-src").src = $("preview-src").src;
  $("out-pha").src = body.outputs.pha;
  $("out-result").src = result;
  $("result-caption").textContent = CAPTIONS[choice];
  $("compare-before").src = $("preview-src").src;
  $("compare-after").src = result;
  const box = $("compare-box");
  box.style.aspectRatio = `${body.width} / ${body.height}`;
  const dl = $("download");
  dl.href = result;
  dl.download = `bgmatting-${FILENAMES[choice]}.png`;
  dl.hidden = false;
  $("results").hidden = false;
  $("compare").hidden = false;
  const t = body.timing;
  setStatus($("status"), `Done: ${body.width}×${body.height}.`);
  $("timing").textContent = `Server ${Math.round(t.total_ms)} ms (model ${Math.round(t.matte_ms)} ms, decode ` +
    `${Math.round(t.decode_ms)} ms, encode ${Math.round(t.encode_ms)} ms, queue ${Math.round(t.queue_ms)} ms) · ` +
    `round trip ${Math.round(roundTrip)} ms`;
  document.body.dataset.photoResult = `${body.width}x${body.height}`;
}

function setCompare(value) {
  // before on the left of the line, after on the right; each clipped, so transparency shows the checkerboard
  $("compare-before").style.clipPath = `inset(0 ${100 - value}% 0 0)`;
  $("compare-after").style.clipPath = `inset(0 0 0 ${value}%)`;
  $("compare-line").style.left = `${value}%`;
}
$("compare-slider").addEventListener("input", (e) => setCompare(e.target.value));
setCompare($("compare-slider").value);

// ------------------------------------------------------------------------------------------ live mode

const TARGET_MS = 250;     // round trip above this: lower the resolution
const FAST_MS = 110;       // below this: raise it again
const MIN_WIDTH = 160;

const live = {
  ws: null, stream: null, running: false, bgReady: false, inFlight: null, nextId: 1,
  scale: 1, rtt: null, lastChange: 0, frames: 0, dropped: 0, times: [], watchdog: null, resultUrl: null,
  canvas: document.createElement("canvas"),

  status(text, kind) { setStatus($("live-status"), text, kind); },

  async start() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      this.status("This browser gives no camera here: live mode needs http://localhost, 127.0.0.1 or https.", "error");
      return;
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
    } catch (e) {
      this.status(`No camera: ${e.message || e.name}`, "error");
      return;
    }
    const video = $("live-video");
    video.srcObject = this.stream;
    await video.play().catch(() => {});
    this.connect();
    $("live-start").disabled = true;
    $("live-stop").disabled = false;
    $("live-capture").disabled = false;
    this.status("Step out of the picture and capture the background.");
  },

  connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/api/live`);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => this.sendConfig();
    ws.onmessage = (e) => this.onMessage(e.data);
    ws.onclose = () => {
      if (this.ws === ws && this.stream) this.status("The connection to the server closed; press Stop and start again.", "error");
      this.running = false;
    };
    this.ws = ws;
  },

  stop() {
    this.running = false;
    this.bgReady = false;
    this.inFlight = null;
    if (this.ws) { const ws = this.ws; this.ws = null; ws.close(); }
    if (this.stream) { for (const t of this.stream.getTracks()) t.stop(); this.stream = null; }
    $("live-video").srcObject = null;
    $("live-start").disabled = false;
    $("live-capture").disabled = true;
    $("live-stop").disabled = true;
  },

  ready() { return this.ws && this.ws.readyState === WebSocket.OPEN; },

  sendConfig() {
    if (!this.ready()) return;
    const choice = $("live-output").value;
    this.ws.send(JSON.stringify({ type: "config", output: choice === "pha" ? "pha" : "com", colour: $("live-colour").value }));
    if (choice !== "image") this.ws.send(JSON.stringify({ type: "clear_target" }));
  },

  async grab(scale, quality) {
    const video = $("live-video");
    const vw = video.videoWidth, vh = video.videoHeight;
    if (!vw || !vh) return null;
    const w = Math.max(Math.min(MIN_WIDTH, vw), Math.round((vw * scale) / 8) * 8);
    const h = Math.round((w * vh) / vw);
    this.canvas.width = w;
    this.canvas.height = h;
    this.canvas.getContext("2d").drawImage(video, 0, 0, w, h);
    const blob = await new Promise((resolve) => this.canvas.toBlob(resolve, "image/jpeg", quality));
    return blob && { bytes: new Uint8Array(await blob.arrayBuffer()), w, h };
  },

  message(tag, bytes, id) {
    const head = id === undefined ? 1 : 5;
    const msg = new Uint8Array(head + bytes.byteLength);
    msg[0] = tag.charCodeAt(0);
    if (id !== undefined) new DataView(msg.buffer).setUint32(1, id, true);
    msg.set(bytes, head);
    return msg;
  },

  async capture() {
    if (!this.ready()) { this.status("Not connected to the server yet; try again.", "error"); return; }
    const shot = await this.grab(1, 0.92);
    if (!shot) { this.status("The camera has no picture yet; try again.", "error"); return; }
    this.bgReady = false;
    this.ws.send(this.message("B", shot.bytes));
    this.status("Background sent…", "busy");
  },

  async sendFrame() {
    if (!this.running || !this.bgReady || this.inFlight || !this.ready()) return;
    const id = this.nextId++;
    this.inFlight = { id, t: performance.now() };  // at most one frame in flight
    const shot = await this.grab(this.scale, 0.8);
    if (!this.inFlight || this.inFlight.id !== id) return;  // stopped meanwhile
    if (!shot || !this.ready()) { this.inFlight = null; setTimeout(() => this.sendFrame(), 100); return; }
    this.inFlight.t = performance.now();
    this.ws.send(this.message("F", shot.bytes, id));
    $("live-res").textContent = `${shot.w}×${shot.h}`;
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => {  // no answer: give up on that frame, send a fresh one
      if (this.inFlight && this.inFlight.id === id) { this.inFlight = null; this.sendFrame(); }
    }, 5000);
  },

  done(id) {
    if (this.inFlight && this.inFlight.id === id) {
      this.inFlight = null;
      requestAnimationFrame(() => this.sendFrame());
    }
  },

  adapt(rtt) {
    this.rtt = this.rtt === null ? rtt : 0.7 * this.rtt + 0.3 * rtt;
    if (this.frames - this.lastChange < 5) return;  // let the average settle after a change
    if (this.rtt > TARGET_MS && this.scale > 0.25) {
      this.scale = Math.max(0.25, this.scale * 0.8);
      this.lastChange = this.frames;
    } else if (this.rtt < FAST_MS && this.scale < 1) {
      this.scale = Math.min(1, this.scale * 1.15);
      this.lastChange = this.frames;
    }
  },

  onMessage(data) {
    if (typeof data === "string") {
      const msg = JSON.parse(data);
      if (msg.type === "background") {
        this.bgReady = true;
        this.running = true;
        this.status(`Background captured (${msg.width}×${msg.height}). Step back into the picture.`);
        this.sendFrame();
      } else if (msg.type === "dropped") {
        this.dropped += 1;
        $("live-dropped").textContent = this.dropped;
        this.done(msg.id);
      } else if (msg.type === "error") {
        this.status(msg.message, "error");
        if (msg.id !== undefined) this.done(msg.id);
      }
      return;
    }
    const view = new DataView(data);
    if (view.getUint8(0) !== 82) return;  // "R"
    const id = view.getUint32(1, true);
    const serverMs = view.getFloat32(5, true);
    const now = performance.now();
    if (this.inFlight && this.inFlight.id === id) this.adapt(now - this.inFlight.t);
    this.frames += 1;
    this.times.push(now);
    while (this.times.length && now - this.times[0] > 2000) this.times.shift();
    const img = $("live-result");
    if (this.resultUrl) URL.revokeObjectURL(this.resultUrl);
    this.resultUrl = URL.createObjectURL(new Blob([data.slice(9)], { type: "image/jpeg" }));
    img.src = this.resultUrl;
    $("live-frames").textContent = this.frames;
    $("live-fps").textContent = this.times.length > 1
      ? ((this.times.length - 1) / ((now - this.times[0]) / 1000)).toFixed(1) : "–";
    $("live-latency").textContent = this.rtt === null ? "–" : `${Math.round(this.rtt)} ms`;
    $("live-server").textContent = `${Math.round(serverMs)} ms`;
    document.body.dataset.liveFrames = String(this.frames);
    this.done(id);
  },
};

$("live-start").addEventListener("click", () => live.start());
$("live-stop").addEventListener("click", () => { live.stop(); live.status("Stopped."); });
$("live-capture").addEventListener("click", () => live.capture());
$("live-output").addEventListener("change", () => {
  const image = $("live-output").value === "image";
  $("live-target").hidden = !image;
  $("live-colour").hidden = $("live-output").value !== "colour";
  live.sendConfig();
  if (image && $("live-target").files[0]) $("live-target").dispatchEvent(new Event("change"));
});
$("live-colour").addEventListener("change", () => live.sendConfig());
$("live-target").addEventListener("change", async () => {
  const f = $("live-target").files[0];
  if (f && live.ready()) live.ws.send(live.message("T", new Uint8Array(await f.arrayBuffer())));
});
window.addEventListener("beforeunload", () => live.stop());

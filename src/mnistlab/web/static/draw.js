// The Draw & inspect tab's input: the drawing pad and the test-image picker, each sending its image
// to the model and showing the answer (prediction.js).

import { $, api, classNames, esc, openTab, runQuery, showError, state } from "./app.js";
import { attributionParams } from "./attribution.js";
import { showPrediction } from "./prediction.js";

// ---------- drawing pad ----------

const pad = $("pad");
const padCtx = pad.getContext("2d", { willReadFrequently: true });
let strokes = [];
let current = null;
const LINE = 20; // px on the 280 px pad: ~2 px after scaling the digit into 20x20, like MNIST's strokes

// Only the answer to the user's latest input (a test image asked for, or a stroke begun) may touch the
// page: a slow earlier answer (the first image shown while a run loads) must not overwrite or wipe what
// the user asked for or drew since, or hide its error.
let latestInput = 0;

function padPoint(ev) {
  const r = pad.getBoundingClientRect();
  return [(ev.clientX - r.left) * (pad.width / r.width), (ev.clientY - r.top) * (pad.height / r.height)];
}

function drawStroke(points) {
  padCtx.lineCap = "round"; padCtx.lineJoin = "round";
  padCtx.lineWidth = LINE; padCtx.strokeStyle = "#000";
  padCtx.beginPath();
  padCtx.moveTo(points[0][0], points[0][1]);
  if (points.length === 1) padCtx.lineTo(points[0][0] + 0.01, points[0][1]);
  for (const [x, y] of points.slice(1)) padCtx.lineTo(x, y);
  padCtx.stroke();
}

function redrawPad() {
  padCtx.clearRect(0, 0, pad.width, pad.height);
  for (const s of strokes) drawStroke(s);
  $("pad-hint").hidden = strokes.length > 0;
}

pad.addEventListener("pointerdown", (ev) => {
  ev.preventDefault();
  pad.setPointerCapture(ev.pointerId);
  current = [padPoint(ev)];
  strokes.push(current);
  latestInput++;  // a test image still on its way must not wipe this drawing
  state.source = { type: "drawing" };
  redrawPad();
  requestUpdate();
});
pad.addEventListener("pointermove", (ev) => {
  if (!current) return;
  const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
  for (const e of events) current.push(padPoint(e));
  redrawPad();
  requestUpdate();
});
const endStroke = () => { if (current) { current = null; requestUpdate(); } };
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

$("btn-clear").addEventListener("click", clearPad);
$("btn-undo").addEventListener("click", () => { strokes.pop(); redrawPad(); requestUpdate(); });
document.addEventListener("keydown", (ev) => {
  if (ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) return;
  if ((ev.ctrlKey || ev.metaKey) && ev.key === "z") { ev.preventDefault(); $("btn-undo").click(); }
  if (ev.key === "Escape") clearPad();
});

function clearPad() {
  strokes = [];
  redrawPad();
  requestUpdate();
}

// Debounced and never more than one request in flight: while drawing, the page shows the latest
// drawing the server has answered for, then catches up.
let timer = null, inflight = false, dirty = false;
function requestUpdate() {
  dirty = true;
  if (timer === null) timer = setTimeout(() => { timer = null; flush(); }, 35);
}

async function flush() {
  if (inflight || !dirty || !state.run) return;
  dirty = false;
  inflight = true;
  const inputBefore = latestInput;
  try {
    const { data } = padCtx.getImageData(0, 0, pad.width, pad.height);
    const ink = new Uint8Array(pad.width * pad.height);
    for (let i = 0; i < ink.length; i++) ink[i] = data[i * 4 + 3];
    let bin = "";
    for (let i = 0; i < ink.length; i += 8192) bin += String.fromCharCode.apply(null, ink.subarray(i, i + 8192));
    const body = { data: btoa(bin), width: pad.width, height: pad.height, drawing: true, ...attributionParams() };
    const res = await api(`/api/predict?${runQuery()}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (latestInput !== inputBefore) return;  // a test image or a new stroke was asked for since: it wins
    state.source = { type: "drawing" };
    showError(null);
    showPrediction(res);
    $("source").textContent = res.blank ? "blank pad: draw a digit" : "your drawing, scaled and centred like MNIST";
  } catch (err) {
    showError(err.message);
  } finally {
    inflight = false;
    if (dirty) requestUpdate();
  }
}

// ---------- test images ----------

async function showTestImage(index) {
  index = Math.max(0, Math.floor(Number(index) || 0));
  const request = ++latestInput;
  try {
    const res = await api(`/api/test-image?${runQuery({ index, ...attributionParams() })}`);
    if (request !== latestInput) return;
    state.source = { type: "test", index };
    $("test-index").value = index;
    strokes = [];
    redrawPad();
    showError(null);
    showPrediction(res, res.label);
    const names = classNames();
    const ok = res.label === res.predicted;
    $("source").innerHTML = `test image #${index} · label <b>${esc(names[res.label])}</b> ` +
      (ok ? `<span style="color:var(--good)">✓</span>` : `<span style="color:var(--bad)">✗</span>`);
  } catch (err) { if (request === latestInput) showError(err.message); }
}

$("btn-load").addEventListener("click", () => showTestImage($("test-index").value));
$("test-index").addEventListener("keydown", (ev) => { if (ev.key === "Enter") showTestImage($("test-index").value); });
$("btn-prev").addEventListener("click", () => showTestImage(Math.max(0, Number($("test-index").value) - 1)));
$("btn-next").addEventListener("click", () => showTestImage(Number($("test-index").value) + 1));
$("btn-random").addEventListener("click", () => showTestImage(Math.floor(Math.random() * 10000)));

export function inspectTestImage(index) {
  openTab("inspect");
  showTestImage(index);
  window.scrollTo({ top: 0, behavior: "smooth" });
}

// Runs whatever is on screen (a test image, the drawing, or the test index) through the model again.
export function refreshSource() {
  if (state.source && state.source.type === "test") return showTestImage(state.source.index);
  if (strokes.length) return requestUpdate();
  return showTestImage($("test-index").value);
}
$("attr-method").addEventListener("change", refreshSource);
$("attr-target").addEventListener("change", refreshSource);

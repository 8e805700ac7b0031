// mnistlab's page: plain JS and canvas, no build step, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  run: null,          // name of the selected run
  info: null,         // GET /api/run answer
  source: null,       // {type: "drawing"} | {type: "test", index}
  loaded: {},         // which lazy tabs have been filled for the current run
  misOffset: 0,
};

// ---------- small helpers ----------

function showError(message) {
  const box = $("error");
  if (!message) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = message;
  box.hidden = false;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error("the server does not answer (is `mnistlab serve` still running?)");
  }
  let body = null;
  try { body = await response.json(); } catch (err) { /* not JSON */ }
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function runQuery(extra = {}) {
  const params = new URLSearchParams({ run: state.run, ...extra });
  return params.toString();
}

function b64bytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

// A 256-entry colour map (dark blue -> magenta -> orange -> pale yellow) for activations.
const COLORMAP = (() => {
  const stops = [[0, [11, 13, 18]], [0.25, [59, 15, 112]], [0.5, [183, 55, 121]], [0.75, [252, 137, 97]], [1, [252, 253, 191]]];
  const table = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = i / 255;
    let j = 0;
    while (j < stops.length - 2 && t > stops[j + 1][0]) j++;
    const [t0, c0] = stops[j], [t1, c1] = stops[j + 1];
    const f = (t - t0) / (t1 - t0);
    for (let k = 0; k < 3; k++) table[i * 3 + k] = c0[k] + f * (c1[k] - c0[k]);
  }
  return table;
})();

// Paint grey-level bytes (h*w) into a canvas of that size; colour map for activations.
function paintGrey(canvas, bytes, w, h, colored = false, offset = 0) {
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  fillPixels(img.data, bytes, offset, w * h, colored);
  ctx.putImageData(img, 0, 0);
}

function fillPixels(rgba, bytes, offset, n, colored) {
  for (let i = 0; i < n; i++) {
    const v = bytes[offset + i];
    if (colored) {
      rgba[i * 4] = COLORMAP[v * 3]; rgba[i * 4 + 1] = COLORMAP[v * 3 + 1]; rgba[i * 4 + 2] = COLORMAP[v * 3 + 2];
    } else {
      rgba[i * 4] = rgba[i * 4 + 1] = rgba[i * 4 + 2] = v;
    }
    rgba[i * 4 + 3] = 255;
  }
}

function thumb(item, onclick) {
  const c = el("canvas", { width: 28, height: 28, class: "pixelated" });
  paintGrey(c, b64bytes(item.image), 28, 28);
  const names = classNames();
  const wrong = item.label !== item.predicted;
  const cap = el("div", { class: "cap" });
  cap.innerHTML = wrong
    ? `${esc(names[item.label])}&rarr;<b>${esc(names[item.predicted])}</b> ${(item.confidence * 100).toFixed(0)}%`
    : `${esc(names[item.label])} ${(item.confidence * 100).toFixed(0)}%`;
  return el("div", { class: "thumb", title: `test image #${item.index}`, "data-index": item.index, onclick }, c, cap);
}

function esc(s) {
  return String(s).replace(/[&<>"]/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[ch]));
}

function classNames() {
  return (state.info && state.info.class_names) || ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
}

// ---------- runs ----------

async function loadRuns() {
  let data;
  try {
    data = await api("/api/runs");
  } catch (err) { showError(err.message); return; }
  const select = $("run-select");
  const previous = state.run || new URLSearchParams(location.search).get("run");
  select.innerHTML = "";
  const usable = data.runs.filter((r) => !r.error);
  for (const r of data.runs) {
    const label = r.error ? `${r.name} (unreadable)`
      : `${r.name} · ${r.kind}${r.imported ? ` · imported from ${r.imported}` : ""}`;
    select.append(el("option", { value: r.name, text: label, ...(r.error ? { disabled: "" } : {}) }));
  }
  const empty = $("empty");
  if (usable.length === 0) {
    empty.innerHTML = `<h2>No runs yet</h2><p>Nothing to show in <code>${esc(data.runs_dir)}</code>.
      Train a model first, e.g. <code>make demo</code>, then reload this page.</p>`;
    empty.hidden = false;
    document.querySelector("main").hidden = true;
    return;
  }
  empty.hidden = true;
  document.querySelector("main").hidden = false;
  const pick = usable.find((r) => r.name === previous) || usable[0];
  select.value = pick.name;
  await selectRun(pick.name);
}

async function selectRun(name) {
  state.run = name;
  state.loaded = {};
  const url = new URL(location.href);
  url.searchParams.set("run", name);
  history.replaceState(null, "", url);
  showError(null);
  try {
    state.info = await api(`/api/run?${runQuery()}`);
  } catch (err) { showError(err.message); return; }
  const info = state.info;
  const acc = info.metrics && (info.metrics.test_accuracy ?? info.metrics.accuracy);
  $("run-info").textContent = [info.kind && info.kind.toUpperCase(), info.dataset,
    info.imported ? `imported from ${info.imported.file}` : null,
    acc != null ? `test accuracy ${(acc * 100).toFixed(2)}%` : null,
    `${info.layers.length} layers`].filter(Boolean).join(" · ");
  buildProbs();
  buildLayerSlots();
  fillClassSelects();
  fillLayerSelect();
  // Re-run whatever was on screen through the new model.
  if (state.source && state.source.type === "test") await showTestImage(state.source.index);
  else if (strokes.length) requestUpdate();
  else await showTestImage(Number($("test-index").value) || 0);
  const active = document.querySelector(".tabs button.active").dataset.tab;
  openTab(active);
}

// ---------- probabilities and layers ----------

function buildProbs() {
  const box = $("probs");
  box.innerHTML = "";
  classNames().forEach((name, k) => {
    box.append(
      el("div", { class: "cls", text: name }),
      el("div", { class: "track" }, el("div", { class: "bar", id: `bar-${k}` })),
      el("div", { class: "pct", id: `pct-${k}`, text: "" }),
    );
  });
}

function buildLayerSlots() {
  const box = $("layers");
  box.innerHTML = "";
  for (const layer of state.info.layers) {
    const shape = layer.shape.join("×");
    const canvas = el("canvas", { class: "pixelated", id: `layer-${layer.name}`, "data-layer": layer.name });
    // an imported model's own layer names, under mnistlab's
    const source = layer.source ? el("div", { class: "muted small source", text: layer.source }) : null;
    box.append(el("div", { class: "layer" },
      el("div", { class: "title", text: layer.name }, el("span", { text: shape })), source, canvas,
      el("div", { class: "muted small", id: `range-${layer.name}` })));
  }
}

function showPrediction(res, label = null) {
  const names = classNames();
  paintGrey($("sees"), b64bytes(res.image), 28, 28);
  const top = res.predicted;
  res.probabilities.forEach((p, k) => {
    const bar = $(`bar-${k}`);
    if (!bar) return;
    bar.style.width = `${(p * 100).toFixed(1)}%`;
    bar.classList.toggle("top", k === top);
    bar.classList.toggle("truth", label !== null && k === label);
    $(`pct-${k}`).textContent = `${(p * 100).toFixed(1)}%`;
  });
  $("verdict").textContent = res.blank ? "" : names[top];
  $("verdict").style.color = label !== null && label !== top ? "var(--bad)" : "";
  $("timing").textContent = res.server_ms != null ? `server: ${res.server_ms.toFixed(1)} ms` : "";
  for (const layer of res.layers) drawLayer(layer);
  drawAttribution(res);
  document.body.dataset.predicted = res.blank ? "" : String(top);
}

// ---------- attribution map ----------

// The chosen method and target, sent with every update; an empty method asks for no map.
function attributionParams() {
  const method = $("attr-method").value;
  if (!method) return {};
  const target = $("attr-target").value.trim();
  return target ? { attribution: method, target } : { attribution: method };
}

// Bytes 0..255 with 128 meaning zero: blue below, white at zero, red above.
function divergingRGB(v) {
  const t = (v - 128) / 127;
  if (t >= 0) return [255, Math.round(255 * (1 - t)), Math.round(255 * (1 - t))];
  return [Math.round(255 * (1 + t)), Math.round(255 * (1 + t)), 255];
}

function drawAttribution(res) {
  const map = $("attr-map"), overlay = $("attr-overlay"), info = $("attr-info");
  const a = res.attribution;
  if (!a || a.error) {
    for (const c of [map, overlay]) c.getContext("2d").clearRect(0, 0, c.width, c.height);
    map.dataset.signature = "";
    info.textContent = a && a.error ? `no map: ${a.error}` : "";
    return;
  }
  const bytes = b64bytes(a.data), image = b64bytes(res.image);
  for (const [canvas, over] of [[map, false], [overlay, true]]) {
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(28, 28);
    for (let i = 0; i < 784; i++) {
      const [r, g, b] = divergingRGB(bytes[i]);
      const grey = 255 - image[i];  // ink dark, as the digit is drawn
      const alpha = over ? Math.min(1, Math.abs(bytes[i] - 128) / 127 * 1.2) : 1;
      img.data[i * 4] = alpha * r + (1 - alpha) * grey;
      img.data[i * 4 + 1] = alpha * g + (1 - alpha) * grey;
      img.data[i * 4 + 2] = alpha * b + (1 - alpha) * grey;
      img.data[i * 4 + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }
  // A short fingerprint of the map, so a change can be seen (and tested) without reading pixels.
  let hash = 0;
  for (let i = 0; i < bytes.length; i++) hash = (hash * 31 + bytes[i]) >>> 0;
  map.dataset.signature = `${a.method}:${a.target}:${hash}`;
  const extra = a.completeness_error != null ? `, completeness error ${fmt(a.completeness_error)}` : a.layer ? `, layer ${a.layer}` : "";
  info.textContent = `${a.method} of ${a.target} = ${fmt(a.objective)}; scale ±${fmt(a.limit)}; ${a.ms.toFixed(1)} ms${extra}`;
}

function refreshSource() {
  if (state.source && state.source.type === "test") showTestImage(state.source.index);
  else if (strokes.length) requestUpdate();
  else showTestImage($("test-index").value);
}
$("attr-method").addEventListener("change", refreshSource);
$("attr-target").addEventListener("change", refreshSource);

// One canvas per layer: conv maps tiled in a grid, dense units as a block of cells.
function drawLayer(layer) {
  const canvas = $(`layer-${layer.name}`);
  if (!canvas) return;
  const bytes = b64bytes(layer.data);
  const gap = 1;
  let cols, rows, tileW, tileH, count, scale, block = 1;
  if (layer.shape.length === 3) {
    const [c, h, w] = layer.shape;
    count = c; tileW = w; tileH = h;
    cols = Math.ceil(Math.sqrt(c * 1.6));
    rows = Math.ceil(c / cols);
    scale = Math.max(1, Math.min(6, Math.floor(440 / (cols * (w + gap)))));
  } else {
    const n = layer.shape.reduce((a, b) => a * b, 1);
    // Each unit is a 4x4 block with a 1 px gap, so the grid lines stay thin at any zoom.
    count = n; block = 4; tileW = tileH = block;
    cols = n <= 16 ? n : Math.ceil(Math.sqrt(n * 2));
    rows = Math.ceil(n / cols);
    scale = Math.max(1, Math.min(5, Math.floor(360 / (cols * (block + gap)))));
  }
  const W = cols * (tileW + gap) - gap, H = rows * (tileH + gap) - gap;
  canvas.width = W; canvas.height = H;
  canvas.style.width = `${W * scale}px`;
  canvas.style.height = `${H * scale}px`;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(W, H);
  const rgba = img.data;
  for (let i = 3; i < rgba.length; i += 4) { rgba[i - 3] = 40; rgba[i - 2] = 44; rgba[i - 1] = 56; rgba[i] = 255; }
  const per = tileW * tileH;
  for (let t = 0; t < count; t++) {
    const x0 = (t % cols) * (tileW + gap), y0 = Math.floor(t / cols) * (tileH + gap);
    for (let y = 0; y < tileH; y++) {
      for (let x = 0; x < tileW; x++) {
        const v = block > 1 ? bytes[t] : bytes[t * per + y * tileW + x];
        const o = ((y0 + y) * W + x0 + x) * 4;
        rgba[o] = COLORMAP[v * 3]; rgba[o + 1] = COLORMAP[v * 3 + 1]; rgba[o + 2] = COLORMAP[v * 3 + 2];
      }
    }
  }
  ctx.putImageData(img, 0, 0);
  canvas.dataset.tiles = JSON.stringify({ cols, tileW, tileH, gap, scale, count, lo: layer.lo, hi: layer.hi });
  $(`range-${layer.name}`).textContent = `range ${fmt(layer.lo)} … ${fmt(layer.hi)}`;
  canvas.dataset.dense = block > 1 ? "1" : "";
  canvas.title = layer.shape.length === 3 ? `${count} maps` : `${count} units`;
}

function fmt(x) {
  return Math.abs(x) >= 1000 || (Math.abs(x) < 0.01 && x !== 0) ? x.toExponential(1) : x.toFixed(Math.abs(x) >= 100 ? 1 : 2);
}

// Hovering a layer names the map or unit under the pointer.
document.addEventListener("mousemove", (ev) => {
  const canvas = ev.target;
  if (!(canvas instanceof HTMLCanvasElement) || !canvas.dataset.tiles) return;
  const t = JSON.parse(canvas.dataset.tiles);
  const r = canvas.getBoundingClientRect();
  const x = Math.floor((ev.clientX - r.left) / t.scale), y = Math.floor((ev.clientY - r.top) / t.scale);
  const col = Math.floor(x / (t.tileW + t.gap)), row = Math.floor(y / (t.tileH + t.gap));
  const k = row * t.cols + col;
  if (col >= t.cols || k >= t.count) return;
  canvas.title = `${canvas.dataset.layer} ${canvas.dataset.dense ? "unit" : "map"} ${k}`;
});

// ---------- drawing pad ----------

const pad = $("pad");
const padCtx = pad.getContext("2d", { willReadFrequently: true });
let strokes = [];
let current = null;
const LINE = 20; // px on the 280 px pad: ~2 px after scaling the digit into 20x20, like MNIST's strokes

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
  const testRequestBefore = testImageRequest;
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
    if (testImageRequest !== testRequestBefore) return;  // a test image was asked for since: it wins
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

// Only the latest test-image request may touch the page: a slow earlier answer (the first image
// shown while a run loads) must not overwrite what the user asked for since, or hide its error.
let testImageRequest = 0;

async function showTestImage(index) {
  index = Math.max(0, Math.floor(Number(index) || 0));
  const request = ++testImageRequest;
  try {
    const res = await api(`/api/test-image?${runQuery({ index, ...attributionParams() })}`);
    if (request !== testImageRequest) return;
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
  } catch (err) { if (request === testImageRequest) showError(err.message); }
}

$("btn-load").addEventListener("click", () => showTestImage($("test-index").value));
$("test-index").addEventListener("keydown", (ev) => { if (ev.key === "Enter") showTestImage($("test-index").value); });
$("btn-prev").addEventListener("click", () => showTestImage(Math.max(0, Number($("test-index").value) - 1)));
$("btn-next").addEventListener("click", () => showTestImage(Number($("test-index").value) + 1));
$("btn-random").addEventListener("click", () => showTestImage(Math.floor(Math.random() * 10000)));

function inspectTestImage(index) {
  openTab("inspect");
  showTestImage(index);
  window.scrollTo({ top: 0, behavior: "smooth" });
}

// ---------- tabs ----------

function openTab(name) {
  for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === `tab-${name}`);
  if (!state.run || state.loaded[name]) return;
  state.loaded[name] = true;
  const loaders = { misclassified: loadMisclassified, confusion: loadConfusion, training: loadTraining, oip: () => {}, compare: () => {},
    sweeps: () => window.loadSweeps() };  // sweeps.js
  if (loaders[name]) loaders[name]();
}

$("tabs").addEventListener("click", (ev) => { if (ev.target.dataset.tab) openTab(ev.target.dataset.tab); });
$("run-select").addEventListener("change", (ev) => selectRun(ev.target.value));

// ---------- misclassified ----------

async function loadMisclassified(more = false) {
  const gallery = $("mis-gallery");
  if (!more) { gallery.innerHTML = '<p class="muted">Evaluating the test split…</p>'; state.misOffset = 0; }
  try {
    const res = await api(`/api/misclassified?${runQuery({ offset: state.misOffset, limit: 120 })}`);
    if (!more) gallery.innerHTML = "";
    $("mis-count").textContent = `(${res.total} of the test split)`;
    for (const item of res.items) gallery.append(thumb(item, () => inspectTestImage(item.index)));
    state.misOffset += res.items.length;
    $("mis-more").hidden = state.misOffset >= res.total;
    if (res.total === 0) gallery.innerHTML = '<p class="muted">None: every test image is classified correctly.</p>';
  } catch (err) { showError(err.message); state.loaded.misclassified = false; }
}
$("mis-more").addEventListener("click", () => loadMisclassified(true));

// ---------- confusion matrix ----------

async function loadConfusion() {
  const box = $("conf-table");
  box.innerHTML = '<p class="muted">Evaluating the test split…</p>';
  try {
    const res = await api(`/api/confusion?${runQuery()}`);
    $("conf-acc").textContent = `(accuracy ${(res.accuracy * 100).toFixed(2)}% on ${res.n} test images)`;
    const names = res.class_names;
    const offMax = Math.max(1, ...res.matrix.flatMap((row, i) => row.filter((_, j) => j !== i)));
    const diagMax = Math.max(1, ...res.matrix.map((row, i) => row[i]));
    const table = el("table", { class: "confusion" });
    const head = el("tr", {}, el("th", { class: "axis", text: "true \\ pred" }));
    names.forEach((n) => head.append(el("th", { text: short(n) , title: n })));
    table.append(head);
    res.matrix.forEach((row, i) => {
      const tr = el("tr", {}, el("th", { text: short(names[i]), title: names[i] }));
      row.forEach((count, j) => {
        const diag = i === j;
        const t = diag ? count / diagMax : Math.sqrt(count / offMax);
        const bg = count === 0 ? "#f6f7f9" : diag ? `rgba(31,157,85,${0.15 + 0.6 * t})` : `rgba(214,69,69,${0.12 + 0.78 * t})`;
        const td = el("td", {
          text: count, title: `true ${names[i]}, predicted ${names[j]}: ${count}`, "data-true": i, "data-pred": j,
          onclick: (ev) => loadCell(i, j, ev.currentTarget),
        });
        td.style.background = bg;
        if (!diag && t > 0.6) td.style.color = "#fff";
        tr.append(td);
      });
      table.append(tr);
    });
    box.innerHTML = "";
    box.append(table);
  } catch (err) { showError(err.message); state.loaded.confusion = false; box.innerHTML = ""; }
}

function short(name) { return name.length > 7 ? name.slice(0, 6) + "…" : name; }

async function loadCell(t, p, td) {
  for (const c of document.querySelectorAll("table.confusion td.sel")) c.classList.remove("sel");
  if (td) td.classList.add("sel");
  const names = classNames();
  const gallery = $("cell-gallery");
  try {
    const res = await api(`/api/confusion-cell?${runQuery({ true: t, pred: p, limit: 120 })}`);
    $("cell-title").textContent = `True ${names[t]}, predicted ${names[p]}: ${res.total} image${res.total === 1 ? "" : "s"}` +
      (res.total > res.items.length ? ` (first ${res.items.length}, most confident first)` : "");
    gallery.innerHTML = "";
    for (const item of res.items) gallery.append(thumb(item, () => inspectTestImage(item.index)));
    if (!res.items.length) gallery.innerHTML = '<p class="muted">No images in this cell.</p>';
  } catch (err) { showError(err.message); }
}

// ---------- training curves (SVG) ----------

function loadTraining() {
  const box = $("curves");
  box.innerHTML = "";
  const hist = (state.info && state.info.history) || [];
  if (!hist.length) {
    const imported = state.info && state.info.imported;
    box.replaceChildren(el("p", { class: "muted", text: imported
      ? `No training history: this model was imported from ${imported.file}, not trained here.`
      : "This run has no training history." }));
    return;
  }
  const keys = [...new Set(hist.flatMap((r) => Object.keys(r)))]
    .filter((k) => k !== "epoch" && hist.some((r) => typeof r[k] === "number" && isFinite(r[k])));
  const varies = (k) => new Set(hist.map((r) => r[k])).size > 1;
  const groups = [
    ["Loss", keys.filter((k) => /loss/i.test(k))],
    ["Accuracy", keys.filter((k) => /acc/i.test(k))],
    // A constant learning rate or the seconds each epoch took say little as a curve.
    ["Learning rate", keys.filter((k) => /^lr$|learning_rate/i.test(k) && varies(k))],
  ];
  const seconds = hist.reduce((t, r) => t + (typeof r.seconds === "number" ? r.seconds : 0), 0);
  if (seconds > 0) box.append(el("p", { class: "muted small", text: `${hist.length} epochs, ${seconds.toFixed(1)} s in all` }));
  for (const [title, ks] of groups) if (ks.length) box.append(chart(title, hist, ks));
}

const PALETTE = ["#3563e9", "#e8833a", "#1f9d55", "#d64545", "#8e5bd6", "#17a2b8"];

// An SVG of W x H and add(tag, attrs, text) that appends an element to it (charts here and in sweeps.js).
function svgCanvas(W, H) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text != null) n.textContent = text;
    svg.append(n);
    return n;
  };
  return [svg, add];
}

const SVG_NS = "http://www.w3.org/2000/svg";

function chart(title, hist, keys) {
  const W = 420, H = 260, m = { l: 50, r: 14, t: 26, b: 34 };
  const xs = hist.map((r, i) => (typeof r.epoch === "number" ? r.epoch : i + 1));
  const vals = keys.flatMap((k) => hist.map((r) => r[k]).filter((v) => typeof v === "number" && isFinite(v)));
  let lo = Math.min(...vals), hi = Math.max(...vals);
  if (hi === lo) { const d = Math.abs(hi) * 0.1 || 0.5; hi += d; lo -= d; }
  const pad = (hi - lo) * 0.06; lo -= pad; hi += pad;
  const x0 = Math.min(...xs), x1 = Math.max(...xs) === x0 ? x0 + 1 : Math.max(...xs);
  const X = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
  const Y = (y) => H - m.b - ((y - lo) / (hi - lo)) * (H - m.t - m.b);
  const [svg, add] = svgCanvas(W, H);
  add("text", { x: m.l, y: 16, "font-size": 13, "font-weight": 600, fill: "#1d2330" }, title);
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4, y = Y(v);
    add("line", { x1: m.l, x2: W - m.r, y1: y, y2: y, stroke: "#eceef2" });
    add("text", { x: m.l - 6, y: y + 4, "font-size": 10, fill: "#6b7385", "text-anchor": "end" }, fmt(v));
  }
  const ticks = Math.min(xs.length, 8);
  for (let i = 0; i < ticks; i++) {
    const x = xs[Math.round((i * (xs.length - 1)) / Math.max(1, ticks - 1))];
    add("text", { x: X(x), y: H - m.b + 16, "font-size": 10, fill: "#6b7385", "text-anchor": "middle" }, x);
  }
  add("text", { x: (W + m.l) / 2, y: H - 4, "font-size": 11, fill: "#6b7385", "text-anchor": "middle" }, "epoch");
  keys.forEach((k, idx) => {
    const pts = hist.map((r, i) => [xs[i], r[k]]).filter(([, v]) => typeof v === "number" && isFinite(v));
    const color = PALETTE[idx % PALETTE.length];
    add("polyline", { points: pts.map(([x, y]) => `${X(x)},${Y(y)}`).join(" "), fill: "none", stroke: color, "stroke-width": 2 });
    for (const [x, y] of pts) {
      add("circle", { cx: X(x), cy: Y(y), r: 2.6, fill: color }).append(
        Object.assign(document.createElementNS(SVG_NS, "title"), { textContent: `${k} @ ${x}: ${y}` }));
    }
  });
  const legend = el("div", { class: "legend" });
  keys.forEach((k, idx) => {
    const i = el("i"); i.style.background = PALETTE[idx % PALETTE.length];
    legend.append(el("span", {}, i, k));
  });
  return el("div", {}, svg, legend);
}

// ---------- compare and OIP (filled by the inspect library's endpoints) ----------

function fillClassSelects() {
  for (const [id, dflt] of [["cmp-a", 4], ["cmp-b", 9]]) {
    const s = $(id);
    s.innerHTML = "";
    classNames().forEach((n, k) => s.append(el("option", { value: k, text: n })));
    s.value = Math.min(dflt, classNames().length - 1);
  }
}

function fillLayerSelect() {
  const s = $("oip-layer");
  s.innerHTML = "";
  const layers = state.info.layers.filter((l) => l.name !== "flatten");
  for (const l of layers) s.append(el("option", { value: l.name, text: `${l.name} (${l.shape.join("×")})` }));
  s.value = state.info.default_oip_layer;  // the library's choice (inspect.default_oip_layer)
}

$("cmp-go").addEventListener("click", loadCompare);
$("oip-go").addEventListener("click", loadOip);

async function loadCompare() {
  const out = $("cmp-out");
  const a = $("cmp-a").value, b = $("cmp-b").value;
  if (a === b) { showError("choose two different classes to compare"); return; }
  out.innerHTML = '<p class="muted">Comparing…</p>';
  try {
    const res = await api(`/api/compare?${runQuery({ a, b })}`);
    showError(null);
    out.innerHTML = "";
    const names = classNames();
    out.append(el("p", { class: "muted small",
      text: `A = ${names[a]}: ${res.a_images.join(" ")}   ·   B = ${names[b]}: ${res.b_images.join(" ")}` }));
    renderFigures(out, res);
  } catch (err) { out.innerHTML = ""; showError(err.message); }
}

async function loadOip() {
  const out = $("oip-out");
  out.innerHTML = '<p class="muted">Optimizing input patterns… (the first time for a layer takes a few seconds)</p>';
  try {
    const res = await api(`/api/oip?${runQuery({ layer: $("oip-layer").value })}`);
    showError(null);
    out.innerHTML = "";
    out.append(el("p", { class: "muted small oip-summary", text: res.summary + ". Caption: unit, and how many times its start activation it reached." }));
    renderFigures(out, res);
  } catch (err) { out.innerHTML = ""; showError(err.message); }
}

// Figures (PNG from the library's viz functions), image tiles and tables, as the endpoint returns them.
function renderFigures(out, res) {
  for (const fig of res.figures || []) {
    out.append(el("div", { class: "figure" },
      el("div", { class: "title", text: fig.title || "" }),
      el("img", { src: `data:image/png;base64,${fig.png}`, alt: fig.title || "" }),
      fig.caption ? el("div", { class: "cap", text: fig.caption }) : null));
  }
  if (res.tiles) {
    const gallery = el("div", { class: "gallery" });
    for (const t of res.tiles) {
      const c = el("canvas", { class: "pixelated" });
      paintGrey(c, b64bytes(t.image), t.width || 28, t.height || 28, false);
      c.style.width = "84px"; c.style.height = "84px";
      gallery.append(el("div", { class: "thumb" + (t.dead ? " dead" : ""), title: t.title || "" }, c, el("div", { class: "cap", text: t.caption || "" })));
    }
    out.append(gallery);
  }
  for (const table of res.tables || []) {
    const t = el("table", { class: "units" });
    t.append(el("tr", {}, ...table.columns.map((c) => el("th", { text: c }))));
    const cell = (v) => (typeof v !== "number" ? v : Number.isInteger(v) ? String(v) : fmt(v));
    for (const row of table.rows) t.append(el("tr", {}, ...row.map((v) => el("td", { text: cell(v) }))));
    out.append(el("div", { class: "figure" }, el("div", { class: "title", text: table.title || "" }), t,
      table.note ? el("div", { class: "cap", text: table.note }) : null));
  }
}

loadRuns();

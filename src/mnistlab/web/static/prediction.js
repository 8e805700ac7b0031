// The Draw & inspect tab's answer: what the model sees, the probabilities and every layer's activations.

import { $, b64bytes, classNames, el, fmt, state } from "./app.js";
import { drawAttribution } from "./attribution.js";
import { COLORMAP, paintGrey } from "./graphics.js";

export function buildProbs() {
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

export function buildLayerSlots() {
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

export function showPrediction(res, label = null) {
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

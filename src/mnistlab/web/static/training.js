// The Training tab: loss, accuracy and learning-rate curves (SVG) from the run's history.json.

import { $, el, fmt, onFirstOpen, state } from "./app.js";
import { SVG_NS, svgCanvas } from "./graphics.js";

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
onFirstOpen("training", loadTraining);

const PALETTE = ["#3563e9", "#e8833a", "#1f9d55", "#d64545", "#8e5bd6", "#17a2b8"];

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

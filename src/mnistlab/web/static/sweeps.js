// The Sweeps tab: a study's trials as a chart and a table; a point or a row opens the trial's run.

import { $, api, el, onFirstOpen, openTab, showError } from "./app.js";
import { SVG_NS, svgCanvas } from "./graphics.js";
import { selectRun } from "./runs.js";

const STATE_COLORS = { complete: "#3563e9", pruned: "#e8833a" };

async function loadSweeps() {
  const select = $("sweep-select");
  let data;
  try { data = await api("/api/sweeps"); } catch (err) { showError(err.message); return; }
  $("sweep-storage").textContent = data.storage ? `(${data.storage})` : "";
  const previous = select.value;
  select.innerHTML = "";
  if (!data.studies.length) {
    $("sweep-about").textContent = "No sweeps yet: run `mnistlab sweep mlp --study NAME --trials N`, then reload.";
    $("sweep-chart").innerHTML = ""; $("sweep-table").innerHTML = "";
    return;
  }
  for (const s of data.studies) {
    const best = s.best_val_accuracy != null ? `, best ${(100 * s.best_val_accuracy).toFixed(2)}%` : "";
    select.append(el("option", { value: s.name, text: `${s.name} · ${s.engine || "?"}${best}` }));
  }
  select.value = data.studies.some((s) => s.name === previous) ? previous : data.studies[0].name;
  await showSweep(select.value);
}
onFirstOpen("sweeps", loadSweeps);

$("sweep-select").addEventListener("change", (ev) => showSweep(ev.target.value));

async function showSweep(name) {
  let data;
  try { data = await api(`/api/sweep?${new URLSearchParams({ study: name })}`); } catch (err) { showError(err.message); return; }
  const rows = data.rows;
  const done = rows.filter((r) => r.state === "complete" || r.state === "pruned").length;
  const test = data.best_test
    ? ` Best trial ${data.best_test.trial}: test accuracy ${(100 * data.best_test.test_accuracy).toFixed(2)}% (evaluated once, after the sweep).`
    : "";
  $("sweep-about").textContent = `${data.engine || "?"} · ${done} of ${data.wanted ?? "?"} trials finished · space: ${data.space || "?"}.${test}`;
  $("sweep-chart").innerHTML = "";
  $("sweep-chart").append(sweepChart(rows));
  $("sweep-table").innerHTML = "";
  $("sweep-table").append(sweepTable(rows));
}

async function openTrialRun(run) {
  const select = $("run-select");
  if (![...select.options].some((o) => o.value === run)) select.append(el("option", { value: run, text: run }));
  select.value = run;
  await selectRun(run);
  openTab("training");
}

function sweepChart(rows) {
  const pts = rows.filter((r) => typeof r.val_accuracy === "number").sort((a, b) => a.trial - b.trial);
  const W = 640, H = 280, m = { l: 54, r: 14, t: 16, b: 34 };
  const [svg, add] = svgCanvas(W, H);
  svg.setAttribute("class", "sweep-chart");
  if (!pts.length) return svg;
  // The scale follows the bulk of the trials; a collapsed one (chance level) sits on the bottom edge, hollow.
  const vals = pts.map((r) => r.val_accuracy).sort((a, b) => a - b);
  const q1 = vals[Math.floor(vals.length / 4)];
  let hi = vals[vals.length - 1], lo = Math.max(vals[0], q1 - 2 * (hi - q1));
  if (hi === lo) { hi += 0.01; lo -= 0.01; }
  const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const x0 = Math.min(...pts.map((r) => r.trial)), x1 = Math.max(x0 + 1, ...pts.map((r) => r.trial));
  const X = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
  const Y = (y) => H - m.b - ((y - lo) / (hi - lo)) * (H - m.t - m.b);
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    add("line", { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v), stroke: "#eceef2" });
    add("text", { x: m.l - 6, y: Y(v) + 4, "font-size": 10, fill: "#6b7385", "text-anchor": "end" }, v.toFixed(4));
  }
  add("text", { x: (W + m.l) / 2, y: H - 6, "font-size": 11, fill: "#6b7385", "text-anchor": "middle" }, "trial");
  const every = Math.max(1, Math.ceil((x1 - x0) / 10));
  for (let t = x0; t <= x1; t += every) {
    add("text", { x: X(t), y: H - m.b + 14, "font-size": 10, fill: "#6b7385", "text-anchor": "middle" }, t);
  }
  // the best complete value so far, as a step line
  let best = -Infinity; const steps = [];
  for (const r of pts) if (r.state === "complete") { best = Math.max(best, r.val_accuracy); steps.push([r.trial, best]); }
  if (steps.length) add("polyline", { points: steps.map(([x, y]) => `${X(x)},${Y(Math.max(y, lo))}`).join(" "), fill: "none", stroke: "#1f9d55", "stroke-width": 1.5 });
  for (const r of pts) {
    const below = r.val_accuracy < lo, color = STATE_COLORS[r.state] || "#999";
    const dot = add("circle", { cx: X(r.trial), cy: Y(Math.max(r.val_accuracy, lo)), r: 5, fill: below ? "#fff" : color, stroke: color,
      class: "sweep-point", "data-trial": r.trial, "data-run": r.run || "", cursor: r.run ? "pointer" : "default" });
    const params = Object.entries(r.params).map(([k, v]) => `${k}=${v}`).join(" ");
    dot.append(Object.assign(document.createElementNS(SVG_NS, "title"),
      { textContent: `trial ${r.trial} (${r.state}): ${r.val_accuracy.toFixed(4)}  ${params}` }));
    if (r.run) dot.addEventListener("click", () => openTrialRun(r.run));
  }
  return svg;
}

function sweepTable(rows) {
  const names = [...new Set(rows.flatMap((r) => Object.keys(r.params)))].sort();
  const t = el("table", { class: "units sweep-table" });
  t.append(el("tr", {}, ...["trial", "state", ...names, "val accuracy", "epochs", "seconds"].map((c) => el("th", { text: c }))));
  for (const r of rows) {
    const cells = [r.trial, r.state + (r.retry_of != null ? ` (retry of ${r.retry_of})` : ""),
      ...names.map((n) => (typeof r.params[n] === "number" ? Number(r.params[n].toPrecision(4)) : r.params[n] ?? "")),
      r.val_accuracy != null ? r.val_accuracy.toFixed(4) : "-", r.epochs ?? "-", r.seconds != null ? r.seconds.toFixed(1) : "-"];
    const tr = el("tr", { "data-trial": r.trial }, ...cells.map((v) => el("td", { text: String(v) })));
    if (r.run) { tr.classList.add("clickable"); tr.addEventListener("click", () => openTrialRun(r.run)); }
    t.append(tr);
  }
  return t;
}

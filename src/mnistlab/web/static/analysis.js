// The Compare and Features tabs, filled by the inspect library's endpoints (/api/compare, /api/oip).

import { $, api, b64bytes, classNames, el, fmt, runQuery, showError, state } from "./app.js";
import { paintGrey } from "./graphics.js";

export function fillClassSelects() {
  for (const [id, dflt] of [["cmp-a", 4], ["cmp-b", 9]]) {
    const s = $(id);
    s.innerHTML = "";
    classNames().forEach((n, k) => s.append(el("option", { value: k, text: n })));
    s.value = Math.min(dflt, classNames().length - 1);
  }
}

export function fillLayerSelect() {
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

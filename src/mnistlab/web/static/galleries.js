// The Misclassified and Confusion tabs: galleries of test images; clicking one inspects it.

import { $, api, b64bytes, classNames, el, esc, onFirstOpen, runQuery, showError, state } from "./app.js";
import { inspectTestImage } from "./draw.js";
import { paintGrey } from "./graphics.js";

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
onFirstOpen("misclassified", loadMisclassified);

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
onFirstOpen("confusion", loadConfusion);

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

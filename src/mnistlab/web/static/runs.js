// The run picker: the runs the server lists, and switching the whole page to one of them.

import { $, api, el, esc, openTab, runQuery, showError, state } from "./app.js";
import { fillClassSelects, fillLayerSelect } from "./analysis.js";
import { refreshSource } from "./draw.js";
import { buildLayerSlots, buildProbs } from "./prediction.js";

export async function loadRuns() {
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

export async function selectRun(name) {
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
  await refreshSource();
  const active = document.querySelector(".tabs button.active").dataset.tab;
  openTab(active);
}

$("run-select").addEventListener("change", (ev) => selectRun(ev.target.value));

// mnistlab's page: plain JS modules and canvas, no build step, no network beyond this server.
// This module is what every part of the page shares: its state, the API call, DOM helpers and the
// tabs. main.js loads the parts; each tab's module fills its own section of index.html.

export const $ = (id) => document.getElementById(id);
export const state = {
  run: null,          // name of the selected run
  info: null,         // GET /api/run answer
  source: null,       // {type: "drawing"} | {type: "test", index}
  loaded: {},         // which lazy tabs have been filled for the current run
  misOffset: 0,
};

// ---------- small helpers ----------

export function showError(message) {
  const box = $("error");
  if (!message) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = message;
  box.hidden = false;
}

export async function api(path, options = {}) {
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

export function runQuery(extra = {}) {
  const params = new URLSearchParams({ run: state.run, ...extra });
  return params.toString();
}

export function b64bytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function el(tag, attrs = {}, ...children) {
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

export function esc(s) {
  return String(s).replace(/[&<>"]/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[ch]));
}

export function fmt(x) {
  return Math.abs(x) >= 1000 || (Math.abs(x) < 0.01 && x !== 0) ? x.toExponential(1) : x.toFixed(Math.abs(x) >= 100 ? 1 : 2);
}

export function classNames() {
  return (state.info && state.info.class_names) || ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
}

// ---------- tabs ----------

// What fills a lazy tab the first time it opens for a run; each tab's module registers its own.
const tabLoaders = {};

export function onFirstOpen(tab, loader) {
  tabLoaders[tab] = loader;
}

export function openTab(name) {
  for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === `tab-${name}`);
  if (!state.run || state.loaded[name]) return;
  state.loaded[name] = true;
  if (tabLoaders[name]) tabLoaders[name]();
}

$("tabs").addEventListener("click", (ev) => { if (ev.target.dataset.tab) openTab(ev.target.dataset.tab); });

// The attribution map beside the probabilities: which pixels raise or lower the target's probability.

import { $, b64bytes, fmt } from "./app.js";

// The chosen method and target, sent with every update; an empty method asks for no map.
export function attributionParams() {
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

export function drawAttribution(res) {
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

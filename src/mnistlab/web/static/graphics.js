// Pixels and charts: grey-level bytes painted into canvases, and a small SVG builder for the charts
// of the Training and Sweeps tabs.

// A 256-entry colour map (dark blue -> magenta -> orange -> pale yellow) for activations.
export const COLORMAP = (() => {
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
export function paintGrey(canvas, bytes, w, h, colored = false, offset = 0) {
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

export const SVG_NS = "http://www.w3.org/2000/svg";

// An SVG of W x H and add(tag, attrs, text) that appends an element to it.
export function svgCanvas(W, H) {
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

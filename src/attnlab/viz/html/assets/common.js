"use strict";
// Shared helpers. Safety rule for every view: text from the data (tokens, names, metadata)
// reaches the page only through textContent, attribute values or canvas fillText, never as
// markup. The Content-Security-Policy of the page blocks every other script and all network.
const AL = (() => {
  const DATA = JSON.parse(document.getElementById("attnlab-data").textContent);
  const ATTRS = new Set(["id", "class", "title", "type", "value", "role", "tabindex",
    "aria-label", "aria-pressed", "aria-live", "for"]);

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k.startsWith("data-") || ATTRS.has(k)) e.setAttribute(k, String(v));
      else throw new Error("attribute not allowed: " + k);
    }
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // matplotlib's Blues and RdBu_r, so the pages match the static figures.
  const BLUES = [[247, 251, 255], [222, 235, 247], [198, 219, 239], [158, 202, 225],
    [107, 174, 214], [66, 146, 198], [33, 113, 181], [8, 81, 156], [8, 48, 107]];
  const RDBU = [[33, 102, 172], [67, 147, 195], [146, 197, 222], [209, 229, 240],
    [247, 247, 247], [253, 219, 199], [244, 165, 130], [214, 96, 77], [178, 24, 43]];
  const HEAD_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a"];

  function ramp(stops, t) {
    t = Math.min(1, Math.max(0, t));
    const x = t * (stops.length - 1);
    const i = Math.min(Math.floor(x), stops.length - 2);
    const f = x - i, a = stops[i], b = stops[i + 1];
    return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
  }

  function headColor(k) {
    return k < HEAD_COLORS.length ? HEAD_COLORS[k] : `hsl(${(k * 137.5) % 360},60%,45%)`;
  }

  function absMax(m) {
    let v = 0;
    for (const row of m) for (const x of row) v = Math.max(v, Math.abs(x));
    return v;
  }

  // One pixel per cell; CSS scales the canvas up with pixelated rendering.
  function drawMatrix(canvas, m, diverging, vmax) {
    const rows = m.length, cols = m[0].length;
    canvas.width = cols;
    canvas.height = rows;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(cols, rows);
    const hi = vmax > 0 ? vmax : 1;
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        const v = m[i][j];
        const c = diverging ? ramp(RDBU, 0.5 + 0.5 * v / hi) : ramp(BLUES, v / hi);
        const k = 4 * (i * cols + j);
        img.data[k] = c[0]; img.data[k + 1] = c[1]; img.data[k + 2] = c[2]; img.data[k + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
  }

  // Heatmap with token labels: opts {size, diverging, vmax, onHover(i, j), onClick(i, j)}.
  function heatmapPanel(m, qTok, kTok, opts) {
    const rows = m.length, cols = m[0].length;
    const cell = Math.max(2, Math.min(28, Math.floor((opts.size || 480) / Math.max(rows, cols))));
    const labels = cell >= 9;
    const font = Math.min(12, cell - 1) + "px";
    const wrap = el("div", { class: "hm" });
    wrap.style.gridTemplateColumns = `auto ${cols * cell + 2}px`;
    const cornerEl = el("div", { class: "hm-corner" });
    const top = el("div", { class: "hm-cols" });
    const left = el("div", { class: "hm-rows" });
    if (labels) {
      kTok.forEach((t, j) => {
        const d = el("div", { class: "hm-col", title: t, "data-j": j }, t);
        d.style.width = cell + "px"; d.style.fontSize = font;
        top.appendChild(d);
      });
      qTok.forEach((t, i) => {
        const d = el("div", { class: "hm-row", title: t, "data-i": i }, t);
        d.style.height = cell + "px"; d.style.lineHeight = cell + "px"; d.style.fontSize = font;
        left.appendChild(d);
      });
    }
    const cv = el("canvas", { class: "hm-canvas" });
    drawMatrix(cv, m, !!opts.diverging, opts.vmax === undefined ? absMax(m) : opts.vmax);
    cv.style.width = cols * cell + 2 + "px";
    cv.style.height = rows * cell + 2 + "px";
    const at = (ev) => {
      const r = cv.getBoundingClientRect();
      const j = Math.floor((ev.clientX - r.left - 1) / cell), i = Math.floor((ev.clientY - r.top - 1) / cell);
      return i >= 0 && i < rows && j >= 0 && j < cols ? [i, j] : null;
    };
    cv.addEventListener("mousemove", (ev) => { const p = at(ev); if (p && opts.onHover) opts.onHover(p[0], p[1]); });
    cv.addEventListener("click", (ev) => { const p = at(ev); if (p && opts.onClick) opts.onClick(p[0], p[1]); });
    wrap.append(cornerEl, top, left, cv);
    return wrap;
  }

  function fmt(v) { return v.toFixed(3); }

  function download(name, url) {
    const a = el("a");
    a.download = name;
    a.href = url;
    document.body.appendChild(a);
    a.click();
    a.remove();
  }

  function selectEl(id, label, options, value, onChange) {
    const wrap = el("label", {}, label + " ");
    const s = el("select", { id, "aria-label": label });
    options.forEach((text, k) => s.appendChild(el("option", { value: k }, text)));
    s.value = String(value);
    s.addEventListener("change", () => onChange(Number(s.value)));
    wrap.appendChild(s);
    return wrap;
  }

  function setHeader(title, subtitle) {
    document.getElementById("title").textContent = title;
    document.getElementById("subtitle").textContent = subtitle;
  }

  // Inside `attnlab serve`'s page this page is a sandboxed frame the page cannot read; telling
  // it which layer/head/query is on screen lets its Save links save what the user sees. Only
  // small integers are sent. A page opened on its own (a top-level window) sends nothing.
  function reportView(state) {
    if (window.parent === window) return;
    window.parent.postMessage(Object.assign({ attnlab: "view-state", view: document.body.dataset.view },
      state), "*");
  }

  const range = (n) => Array.from({ length: n }, (_, i) => i);
  return { DATA, el, ramp, BLUES, headColor, absMax, drawMatrix, heatmapPanel, fmt, download,
    selectEl, setHeader, range, reportView };
})();

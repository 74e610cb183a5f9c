// Head view: queries on the left, keys on the right, one line per (query, key, head) whose
// opacity is the attention weight. Hover a token to isolate its lines and list its weights;
// click to pin the selection. Layer selector, head checkboxes, PNG export.
(() => {
  const { DATA: D, el, fmt, headColor, range } = AL;
  const V = D.view;
  const [NL, NH, NQ, NK] = D.shape;
  const ROW = 22, LINES_W = 220;
  const state = {
    layer: V.layer, heads: new Set(V.heads), focus: null, pinned: false,
  };
  AL.setHeader(V.title, `${NQ} queries × ${NK} keys · ${NL} layer(s) × ${NH} head(s). ` +
    "Hover or click a token; line opacity = attention weight.");

  const app = document.getElementById("app");
  const controls = el("div", { class: "controls" });
  controls.appendChild(AL.selectEl("layer", "Layer", D.layers.map((l) => `layer ${l}`), state.layer,
    (v) => { state.layer = v; render(); }));
  const headBox = el("div", { class: "heads", role: "group", "aria-label": "heads" });
  const boxes = range(NH).map((k) => {
    const lab = el("label", { class: "head-toggle", title: `head ${D.heads[k]}` });
    const cb = el("input", { type: "checkbox", "data-h": k });
    cb.checked = state.heads.has(k);
    cb.addEventListener("change", () => {
      if (cb.checked) state.heads.add(k); else state.heads.delete(k);
      render();
    });
    const sw = el("span", { class: "swatch" });
    sw.style.background = headColor(k);
    lab.append(cb, sw, el("span", {}, `h${D.heads[k]}`));
    headBox.appendChild(lab);
    return cb;
  });
  const setAll = (on) => {
    boxes.forEach((cb, k) => { cb.checked = on; if (on) state.heads.add(k); else state.heads.delete(k); });
    render();
  };
  const allBtn = el("button", { id: "all-heads", type: "button" }, "all");
  allBtn.addEventListener("click", () => setAll(true));
  const noneBtn = el("button", { id: "no-heads", type: "button" }, "none");
  noneBtn.addEventListener("click", () => setAll(false));
  const pngBtn = el("button", { id: "save-png", type: "button" }, "Save PNG");
  pngBtn.addEventListener("click", savePng);
  controls.append(headBox, allBtn, noneBtn, pngBtn);

  const wrap = el("div", { class: "headview-wrap" });
  const view = el("div", { class: "headview" });
  const qCol = el("div", { class: "tokens q", id: "q-tokens" });
  const kCol = el("div", { class: "tokens k", id: "k-tokens" });
  const qEls = D.q_tokens.map((t, i) => el("div", { class: "tok", "data-i": i, tabindex: 0, title: t }, t));
  const kEls = D.k_tokens.map((t, j) => el("div", { class: "tok", "data-j": j, tabindex: 0, title: t }, t));
  qCol.append(...qEls);
  kCol.append(...kEls);
  const canvas = el("canvas", { id: "lines" });
  const height = Math.max(NQ, NK) * ROW;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = LINES_W * dpr; canvas.height = height * dpr;
  canvas.style.width = LINES_W + "px"; canvas.style.height = height + "px";
  view.append(qCol, canvas, kCol);
  const detail = el("section", { id: "detail", "aria-live": "polite" });
  const caption = el("p", { id: "detail-caption", class: "hint" });
  const table = el("table", { id: "weights" });
  detail.append(caption, table);
  wrap.append(view, detail);
  app.append(controls, wrap);

  // Queries and keys are centred in their own column (they may differ in number).
  const yq = (i) => (i + 0.5) * ROW + (height - NQ * ROW) / 2;
  const yk = (j) => (j + 0.5) * ROW + (height - NK * ROW) / 2;
  qCol.style.paddingTop = (height - NQ * ROW) / 2 + "px";
  kCol.style.paddingTop = (height - NK * ROW) / 2 + "px";

  // Lines are batched into 64 opacity levels per head: one path each, fast for 256 tokens.
  function drawLines(ctx, x0, x1, oy) {
    const W = D.weights[state.layer];
    const f = state.focus;
    const heads = [...state.heads].sort((a, b) => a - b);
    ctx.lineWidth = f ? 2 : 1;
    for (const h of heads) {
      const buckets = new Map();
      for (let i = 0; i < NQ; i++) {
        if (f && f.side === "q" && f.index !== i) continue;
        const row = W[h][i];
        for (let j = 0; j < NK; j++) {
          if (f && f.side === "k" && f.index !== j) continue;
          const w = row[j];
          if (w < 1 / 255) continue; // below one 8-bit alpha step: invisible
          const b = Math.min(63, Math.round(w * 63));
          if (!buckets.has(b)) buckets.set(b, []);
          buckets.get(b).push(i, j);
        }
      }
      ctx.strokeStyle = headColor(h);
      for (const [b, ij] of buckets) {
        ctx.globalAlpha = Math.max(b, 0.5) / 63;
        ctx.beginPath();
        for (let n = 0; n < ij.length; n += 2) {
          ctx.moveTo(x0, oy + yq(ij[n])); ctx.lineTo(x1, oy + yk(ij[n + 1]));
        }
        ctx.stroke();
      }
    }
    ctx.globalAlpha = 1;
  }

  function weightOf(h, i, j) { return D.weights[state.layer][h][i][j]; }

  function shadeTokens() {
    const f = state.focus;
    const heads = [...state.heads];
    qEls.forEach((e) => { e.style.background = ""; e.classList.remove("focus"); });
    kEls.forEach((e) => { e.style.background = ""; e.classList.remove("focus"); });
    if (!f) return;
    (f.side === "q" ? qEls : kEls)[f.index].classList.add("focus");
    const others = f.side === "q" ? kEls : qEls;
    others.forEach((e, n) => {
      let w = 0;
      for (const h of heads) w = Math.max(w, f.side === "q" ? weightOf(h, f.index, n) : weightOf(h, n, f.index));
      e.style.background = `rgba(66,146,198,${w.toFixed(3)})`;
    });
  }

  function fillDetail() {
    const f = state.focus;
    table.replaceChildren();
    const heads = [...state.heads].sort((a, b) => a - b);
    if (!f) {
      caption.textContent = "Hover or click a token to see its attention weights.";
      return;
    }
    const isQ = f.side === "q";
    const tok = (isQ ? D.q_tokens : D.k_tokens)[f.index];
    caption.replaceChildren(
      document.createTextNode(isQ ? "Attention from query " : "Attention to key "),
      el("code", { id: "detail-token" }, tok),
      document.createTextNode(` (#${f.index}), layer ${D.layers[state.layer]}` +
        (state.pinned ? " · pinned (click again to release)" : "")));
    const head = el("tr");
    head.append(el("th", {}, "#"), el("th", {}, isQ ? "key" : "query"));
    for (const h of heads) {
      const th = el("th", { class: "val", "data-h": h }, `h${D.heads[h]}`);
      th.style.color = headColor(h);
      head.appendChild(th);
    }
    const thead = el("thead"); thead.appendChild(head);
    const tbody = el("tbody");
    const n = isQ ? NK : NQ;
    const names = isQ ? D.k_tokens : D.q_tokens;
    for (let m = 0; m < n; m++) {
      const tr = el("tr", { "data-n": m });
      tr.append(el("td", {}, m), el("td", { class: "tokcell", title: names[m] }, names[m]));
      for (const h of heads) {
        const w = isQ ? weightOf(h, f.index, m) : weightOf(h, m, f.index);
        const td = el("td", { class: "val", "data-h": h }, fmt(w));
        td.style.background = `rgba(66,146,198,${(0.6 * w).toFixed(3)})`;
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
    table.append(thead, tbody);
  }

  function render() {
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, LINES_W, height);
    drawLines(ctx, 4, LINES_W - 4, 0);
    shadeTokens();
    fillDetail();
    const shown = [...state.heads].sort((a, b) => a - b).map((h) => D.heads[h]);
    AL.reportView({ layer: D.layers[state.layer], heads: shown });
    document.body.dataset.ready = "1";
  }

  function setFocus(side, index, pin) {
    if (pin) {
      const same = state.pinned && state.focus && state.focus.side === side && state.focus.index === index;
      state.pinned = !same;
      state.focus = same ? null : { side, index };
    } else if (!state.pinned) {
      state.focus = side === null ? null : { side, index };
    }
    render();
  }

  [[qEls, "q"], [kEls, "k"]].forEach(([els, side]) => els.forEach((e, n) => {
    e.addEventListener("mouseenter", () => setFocus(side, n, false));
    e.addEventListener("mouseleave", () => setFocus(null, 0, false));
    e.addEventListener("focus", () => setFocus(side, n, false));
    e.addEventListener("click", () => setFocus(side, n, true));
    e.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") setFocus(side, n, true); });
  }));

  // PNG export draws tokens with fillText (never markup) next to the same lines.
  function savePng() {
    const colW = 160, scale = 2, W = colW * 2 + LINES_W, H = height + 40;
    const c = document.createElement("canvas");
    c.width = W * scale; c.height = H * scale;
    const ctx = c.getContext("2d");
    ctx.scale(scale, scale);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
    ctx.fillStyle = "#1d2430"; ctx.font = "12px sans-serif";
    ctx.fillText(`layer ${D.layers[state.layer]}`, 8, 16);
    ctx.font = "13px monospace"; ctx.textBaseline = "middle";
    const cut = (t) => (t.length > 20 ? t.slice(0, 19) + "…" : t);
    ctx.textAlign = "right";
    D.q_tokens.forEach((t, i) => ctx.fillText(cut(t), colW - 6, 30 + yq(i)));
    ctx.textAlign = "left";
    D.k_tokens.forEach((t, j) => ctx.fillText(cut(t), colW + LINES_W + 6, 30 + yk(j)));
    ctx.save(); ctx.translate(colW, 0);
    drawLines(ctx, 4, LINES_W - 4, 30);
    ctx.restore();
    AL.download(`head-view-layer${D.layers[state.layer]}.png`, c.toDataURL("image/png"));
  }

  render();
})();

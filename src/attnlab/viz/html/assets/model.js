// Model view: one thumbnail heatmap per (layer, head); click one to zoom in with token labels
// and a readout of the cell under the mouse. Thumbnails are coloured relative to their own max.
(() => {
  const { DATA: D, el, fmt, range } = AL;
  const V = D.view;
  const [NL, NH, NQ, NK] = D.shape;
  AL.setHeader(V.title, `${NL} layer(s) × ${NH} head(s), ${NQ} queries × ${NK} keys. ` +
    "Click a head to zoom; colours are relative to each head's largest weight.");

  const app = document.getElementById("app");
  const grid = el("div", { class: "modelgrid", id: "model-grid" });
  grid.style.gridTemplateColumns = `auto repeat(${NH}, auto)`;
  grid.appendChild(el("div"));
  range(NH).forEach((h) => grid.appendChild(el("div", { class: "axis" }, `head ${D.heads[h]}`)));
  const thumbs = [];
  range(NL).forEach((l) => {
    grid.appendChild(el("div", { class: "axis" }, `layer ${D.layers[l]}`));
    range(NH).forEach((h) => {
      const pattern = V.patterns ? V.patterns[l][h] : null;
      const fig = el("figure", { class: "thumb", tabindex: 0, "data-l": l, "data-h": h,
        title: `layer ${D.layers[l]}, head ${D.heads[h]}` + (pattern ? ` (${pattern.label})` : "") });
      const cv = el("canvas");
      AL.drawMatrix(cv, D.weights[l][h], false, AL.absMax(D.weights[l][h]));
      cv.style.height = Math.round((72 * NQ) / NK) + "px";
      const cap = `L${D.layers[l]} H${D.heads[h]}` + (pattern ? ` · ${pattern.label}` : "");
      fig.append(cv, el("figcaption", {}, cap));
      fig.addEventListener("click", () => openZoom(l, h));
      fig.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") openZoom(l, h); });
      grid.appendChild(fig);
      thumbs.push(fig);
    });
  });

  const zoom = el("section", { id: "zoom", role: "dialog", "aria-label": "zoomed head" });
  zoom.hidden = true;
  const close = el("button", { id: "zoom-close", type: "button" }, "close (Esc)");
  const zTitle = el("h2", { id: "zoom-title" });
  const zPattern = el("p", { id: "zoom-pattern", class: "hint" });
  const readout = el("p", { id: "zoom-readout", class: "readout" });
  const body = el("div", { id: "zoom-body" });
  zoom.append(close, zTitle, zPattern, readout, body);
  app.append(grid, zoom);
  let opener = null;

  function openZoom(l, h) {
    opener = document.activeElement;
    const m = D.weights[l][h];
    zTitle.textContent = `Layer ${D.layers[l]}, head ${D.heads[h]}`;
    const p = V.patterns ? V.patterns[l][h] : null;
    zPattern.textContent = p
      ? "pattern: " + p.scores.map((s) => `${s.label} ${s.score.toFixed(2)}` +
        (s.column !== undefined ? ` (key ${s.column})` : "")).join(" · ")
      : "";
    readout.textContent = "Move the mouse over the heatmap.";
    const size = Math.min(window.innerWidth - 260, window.innerHeight - 260, 720);
    body.replaceChildren(AL.heatmapPanel(m, D.q_tokens, D.k_tokens, {
      size: Math.max(size, 240),
      onHover: (i, j) => {
        readout.textContent = `query ${i} ${JSON.stringify(D.q_tokens[i])} → key ${j} ` +
          `${JSON.stringify(D.k_tokens[j])}: ${fmt(m[i][j])}`;
      },
    }));
    zoom.dataset.l = l; zoom.dataset.h = h;
    zoom.hidden = false;
    close.focus();
  }

  function closeZoom() {
    zoom.hidden = true;
    if (opener && opener.focus) opener.focus();
  }
  close.addEventListener("click", closeZoom);
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && !zoom.hidden) closeZoom(); });
  document.body.dataset.ready = "1";
})();

// Token-share view: the prompt with its highlighted span, and the generated answer coloured
// by the share of attention each token put on that span (mean over layers). Hover an answer
// token (click to pin) for its per-layer shares as bars with the exact values.
(() => {
  const { DATA: D, el, fmt, range } = AL;
  const NL = D.layers.length;
  // matplotlib's Reds, as in the static share figure.
  const REDS = [[255, 245, 240], [254, 224, 210], [252, 187, 161], [252, 146, 114],
    [251, 106, 74], [239, 59, 44], [203, 24, 29], [165, 15, 21], [103, 0, 13]];
  const vmax = Math.max(...D.mean) || 1;  // colour scale: 0 .. largest mean share
  const bmax = Math.max(...D.share.map((r) => Math.max(...r))) || 1;  // bar scale, all tokens
  const hl = new Set(D.highlight);
  const state = { focus: null, pinned: false };
  const rgb = (t) => `rgb(${AL.ramp(REDS, t).map(Math.round).join(",")})`;

  const U = D.uniform;  // per answer token: the share uniform attention gives the span, or null
  const meanOf = (a) => a.reduce((x, y) => x + y, 0) / a.length;
  const ratio = (s, u) => (u > 0 ? ` (${(s / u).toFixed(1)}× uniform)` : "");
  AL.setHeader(D.view.title, `${D.answer.length} generated tokens · ${NL} layer(s). Colour: ` +
    "share of attention on the highlighted prompt words, mean over layers. Hover a token for " +
    "its share in each layer." + (U ? ` Mean share ${fmt(meanOf(D.mean))} against ${fmt(meanOf(U))} ` +
    "for uniform attention over the keys each token sees (the black mark on each bar)." : ""));

  const app = document.getElementById("app");
  const controls = el("div", { class: "controls" });
  const legend = el("div", { class: "legend", id: "legend" });
  const scale = el("div", { class: "scale" });
  const rampEl = el("div", { class: "ramp" });
  rampEl.style.background = `linear-gradient(to right, ${range(9).map((i) => rgb(i / 8)).join(", ")})`;
  const ticks = el("div", { class: "ticks" });
  ticks.append(el("span", {}, fmt(0)), el("span", {}, fmt(vmax / 2)), el("span", {}, fmt(vmax)));
  scale.append(rampEl, ticks);
  legend.append(el("span", {}, "mean share over layers"), scale);
  const spanNote = el("span", { class: "hint", id: "span-note" },
    `highlighted: ${D.highlight.map((p) => D.prompt[p]).join("")}`);
  controls.append(legend, spanNote);

  const wrap = el("div", { class: "gen-wrap" });
  const textCol = el("div", { class: "gen-text" });
  const promptBox = el("div", { class: "flow prompt", id: "prompt" });
  D.prompt_flow.forEach((t, p) => {
    promptBox.appendChild(el("span", { class: "tok" + (hl.has(p) ? " hl" : ""), "data-p": p,
      title: `#${p} ${D.prompt[p]}` + (hl.has(p) ? " (highlighted)" : "") }, t));
  });
  const answerBox = el("div", { class: "flow answer", id: "answer" });
  const toks = D.answer_flow.map((t, i) => {
    const e = el("span", { class: "tok", "data-i": i, "data-share": D.mean[i].toFixed(4),
      title: `#${i} ${D.answer[i]}: mean share ${fmt(D.mean[i])}` + (U ? ratio(D.mean[i], U[i]) : "") }, t);
    const v = D.mean[i] / vmax;
    e.style.backgroundColor = rgb(v);
    if (v > 0.6) e.classList.add("hot");
    answerBox.appendChild(e);
    return e;
  });
  textCol.append(el("h2", {}, "Prompt"), promptBox, el("h2", {}, "Generated"), answerBox);
  const side = el("aside", { class: "gen-side", id: "detail", "aria-live": "polite" });
  const caption = el("p", { id: "detail-caption", class: "hint" });
  const bars = el("div", { class: "bars", id: "bars" });
  side.append(el("h2", {}, "Share by layer"), caption, bars);
  wrap.append(textCol, side);
  app.append(controls, wrap);

  function render() {
    toks.forEach((e) => e.classList.remove("focus"));
    bars.replaceChildren();
    const i = state.focus;
    if (i === null) {
      caption.textContent = "Hover or click a generated token to see its share in each layer.";
    } else {
      toks[i].classList.add("focus");
      caption.replaceChildren(document.createTextNode(`Token #${i} `),
        el("code", { id: "detail-token" }, D.answer[i]),
        document.createTextNode(`: mean share ${fmt(D.mean[i])}` +
          (U ? `${ratio(D.mean[i], U[i])}; uniform attention: ${fmt(U[i])}` : "") +
          (state.pinned ? " · pinned (click again or Esc to release)" : "")));
      D.share[i].forEach((s, l) => {
        const r = el("div", { class: "barrow", "data-l": l, title: `layer ${D.layers[l]}: ${s}` });
        const track = el("div", { class: "track" });
        const fill = el("div", { class: "fill" });
        fill.style.width = (100 * s / bmax).toFixed(1) + "%";
        track.appendChild(fill);
        if (U) {
          const mark = el("div", { class: "uniform-mark", title: `uniform attention: ${fmt(U[i])}` });
          mark.style.left = Math.min(100, 100 * U[i] / bmax).toFixed(1) + "%";
          track.appendChild(mark);
        }
        r.append(el("span", { class: "name" }, `L${D.layers[l]}`), track,
          el("span", { class: "val" }, fmt(s)));
        bars.appendChild(r);
      });
    }
    document.body.dataset.ready = "1";
  }

  function setFocus(i, pin) {
    if (pin) {
      const same = state.pinned && state.focus === i;
      state.pinned = !same;
      state.focus = same ? null : i;
    } else if (!state.pinned) {
      state.focus = i;
    } else {
      return;
    }
    render();
  }

  const tokOf = (ev) => {
    const e = ev.target.closest(".tok[data-i]");
    return e ? Number(e.dataset.i) : null;
  };
  answerBox.addEventListener("mouseover", (ev) => { const i = tokOf(ev); if (i !== null && i !== state.focus) setFocus(i, false); });
  answerBox.addEventListener("click", (ev) => { const i = tokOf(ev); if (i !== null) setFocus(i, true); });
  // The last hovered token stays shown (the mouse may travel to the bars); Escape clears.
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") { state.pinned = false; state.focus = null; render(); }
  });

  render();
})();

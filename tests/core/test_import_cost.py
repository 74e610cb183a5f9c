"""No work at import: `import attnlab.viz` loads no torch, `import attnlab` runs no self-check."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def test_import_attnlab_viz_imports_no_torch():
    assert _run("import sys, attnlab.viz; print('torch' in sys.modules)").strip() == "False"


def test_import_attnlab_runs_no_self_check_and_names_resolve_lazily():
    out = _run(
        "import sys, attnlab\n"
        "import attnlab.backends.tiled.fused as f\n"
        "print('AVAILABLE' in vars(f), 'sympy' in sys.modules)\n"
        "from attnlab import masks, MultiHeadAttention\n"
        "print(callable(attnlab.attention), masks.causal().kind, MultiHeadAttention.__name__)\n"
        "print(type(f.AVAILABLE).__name__, 'AVAILABLE' in vars(f))\n"
    ).split("\n")
    assert out[0] == "False False"  # the fused-op check has not run: no autograd, no sympy
    assert out[1] == "True causal MultiHeadAttention"
    assert out[2] == "bool True"  # first use runs it once and keeps the result


def test_the_lazy_self_check_passes_when_first_reached_inside_inference_mode():
    # The first tiled call often comes from a model forward under no_grad / inference_mode; the
    # check must still get its autograd reference, or the fused path is lost for the process.
    out = _run(
        "import torch, attnlab\n"
        "import attnlab.backends.tiled.fused as f\n"
        "q = torch.randn(1, 2, 300, 16)\n"
        "with torch.inference_mode():\n"
        "    attnlab.attention(q, q, q, mask=attnlab.masks.causal(), backend='tiled')\n"
        "print(f.AVAILABLE, f.AVAILABLE_BACKWARD)\n"
    )
    assert out.strip() == "True True"


def test_dir_lists_the_public_names_once_and_not_the_loaders_own():
    """dir(attnlab) listed KVCache twice once resolved, and TYPE_CHECKING, importlib, annotations."""
    import attnlab

    _ = attnlab.KVCache, attnlab.masks  # resolved names land in the module's globals
    public = [n for n in dir(attnlab) if not n.startswith("__")]
    assert public == sorted(attnlab.__all__)
    assert "__version__" in dir(attnlab)

"""Views that display themselves in Jupyter and VS Code notebooks.

- An HTML page (head, model, compare, generation, share views) is an :class:`HtmlPage`: the
  same ``str`` as before, plus ``_repr_html_``. A notebook shows it in an ``<iframe srcdoc>``
  sandboxed to scripts only: the page keeps its own Content-Security-Policy (nothing fetched)
  and its own document, so two views in one notebook never share element ids or globals, and
  an untrusted token can reach neither the notebook nor another view (no same-origin access).
- A figure (heatmap, mask plot, layers x heads grid, ...) is a
  :class:`~attnlab.viz.figure.ViewFigure`: a matplotlib ``Figure`` with ``_repr_png_``, shown
  inline without pyplot or ``%matplotlib inline``. (It lives in figure.py: this module loads
  no matplotlib, so HTML pages stay light.)

Pages are capped when they are built (:mod:`attnlab.viz.safety`, the generation view's limits),
so a view too big for a notebook fails with the same message and advice as one for a file.
"""

from __future__ import annotations

import io
from html import escape
from typing import Any

from attnlab.arguments import expect_int

# Height of the inline frame per view, in CSS pixels (the page scrolls inside it).
FRAME_HEIGHT = {"head": 620, "model": 760, "compare": 640, "generation": 560, "share": 480}


class HtmlPage(str):
    """An offline page's HTML text (a ``str``) that displays itself in a notebook."""

    view: str = "page"
    page_title: str = ""  # not "title": str.title is a method
    height: int | None = None  # frame height in pixels (default: FRAME_HEIGHT of the view)

    @classmethod
    def of(cls, text: str, view: str, title: str) -> HtmlPage:
        page = cls(text)
        page.view, page.page_title = view, title
        return page

    def iframe(self, height: int | None = None) -> str:
        """The page as one sandboxed ``<iframe srcdoc>`` element (HTML-escaped attribute)."""
        height = self.height if height is None else height
        h = FRAME_HEIGHT.get(self.view, 600) if height is None else height
        expect_int("height", h, 50, expected="an int of at least 50 (CSS pixels)", got=height)
        return (f'<iframe class="attnlab-view" data-view="{escape(self.view)}" '
                f'title="{escape(self.page_title)}" sandbox="allow-scripts allow-downloads" '
                f'style="width: 100%; height: {h}px; border: 0" '
                f'srcdoc="{escape(str(self), quote=True)}"></iframe>')

    def _repr_html_(self) -> str:
        return self.iframe()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        # text/plain is a summary: IPython would otherwise print the whole page as a str repr.
        return {"text/html": self.iframe(), "text/plain": self.summary()}

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        # IPython's text/plain printer for str would win over the bundle's: the summary instead
        p.text(self.summary())

    def summary(self) -> str:
        return f"<attnlab {self.view} view {self.page_title!r}: {len(self):,} characters of HTML>"


def show(obj: Any, *, height: int | None = None) -> Any:
    """Display a view in the running notebook (the explicit form of ending a cell with it).

    ``obj``: a page (an :class:`HtmlPage`, what the ``*_html`` functions return) or a figure.
    ``height`` sets an HTML view's frame height in pixels. Returns ``obj``.
    """
    try:
        from IPython.core.interactiveshell import InteractiveShell
        from IPython.display import display

        running = InteractiveShell.initialized()
    except ImportError:
        running = False
    if not running:
        # outside IPython, display() would print the whole page as text
        raise ValueError("show: expected to run in a notebook (Jupyter, VS Code) or IPython, got a "
                         "plain Python process; write the view to a file with path= instead")
    from matplotlib.figure import Figure

    from attnlab.viz.figure import ViewFigure

    if isinstance(obj, HtmlPage):
        obj.iframe(height)  # checks height before anything is shown
        framed = HtmlPage.of(obj, obj.view, obj.page_title)
        framed.height = height
        display(framed)
    elif isinstance(obj, Figure) and not isinstance(obj, ViewFigure):
        from IPython.display import Image  # a figure built elsewhere: drawn here, not by pyplot

        buf = io.BytesIO()
        obj.savefig(buf, format="png")
        display(Image(data=buf.getvalue(), format="png"))
    elif hasattr(obj, "_repr_png_") or hasattr(obj, "_repr_html_"):
        display(obj)
    else:
        raise ValueError(f"obj: expected an attnlab view (an HTML page from a *_html function or "
                         f"a figure), got {type(obj).__name__}")
    return obj

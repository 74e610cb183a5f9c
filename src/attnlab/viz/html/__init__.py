"""Self-contained interactive HTML pages (head view, model view, compare view)."""

from attnlab.viz.html.views import compare_view_html, head_view_html, model_view_html

__all__ = ["compare_view_html", "head_view_html", "model_view_html"]

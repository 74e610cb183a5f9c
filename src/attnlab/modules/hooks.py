"""Named hook points: one way in to every activation of an attnlab model.

A :class:`HookPoint` is an identity module placed where users read or patch activations (the
residual stream, q/k/v, scores, pattern, per-head outputs, the MLP's hidden activation, the
final norm's scale). A model built on :class:`HookedModel` names every hook point once, when it
is built, by its dotted path (``layers.3.attention.hook_pattern``), the shape of
TransformerLens's ``HookedRootModule.setup()``; tools then reach activations by name:

    with model.hooks([("layers.3.attention.hook_z", zero_head_2)]):   # removed on exit, even on error
        out = model(ids)
    out, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_pattern"))

A hook function is ``fn(activation, hook) -> Tensor | None``: returning a tensor replaces the
activation (ablation, patching); ``hook.name`` says where it fired. ``model.hook_name(layer,
site)`` gives the dotted name of a site of a layer ("resid_pre", "attn.pattern", "mlp.post"...)
whatever the model calls its attributes, so no tool needs an attribute path.
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module
from torch.utils.hooks import RemovableHandle

from attnlab.arguments import expect_int

HookFn = Callable[[Tensor, "HookPoint"], "Tensor | None"]
NameFilter = str | Sequence[str] | Callable[[str], bool] | None

# Sites of a layer, the same for every model: the residual stream before, between and after
# attention and MLP; the attention's q, k, v, scores (pre-softmax), pattern (post-softmax) and
# per-head outputs z; the MLP's hidden activation.
BLOCK_SITES = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
ATTN_SITES = ("q", "k", "v", "scores", "pattern", "z")
SITES = (*BLOCK_SITES, *(f"attn.{s}" for s in ATTN_SITES), "mlp.post")


class HookPoint(nn.Identity):
    """Identity whose output forward hooks may read or replace. ``name`` is its dotted path in
    the model, set by :meth:`HookedModel.setup_hooks` (None while the module is on its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        return x

    def __call__(self, x: Tensor) -> Tensor:
        # The test nn.Module's call makes before running hooks, without its two extra calls: a
        # decode step passes ~300 hook points (SmolLM2), almost always with nothing listening.
        if self._forward_hooks or self._forward_pre_hooks or self._backward_hooks or \
                self._backward_pre_hooks or _module._global_forward_hooks or \
                _module._global_forward_pre_hooks or _module._global_backward_hooks or \
                _module._global_backward_pre_hooks:
            return super().__call__(x)
        return x

    @property
    def active(self) -> bool:
        """Does a hook listen here? Modules compute optional activations (weights, scores)
        only when one does."""
        return bool(self._forward_hooks)

    def add_hook(self, fn: HookFn) -> RemovableHandle:
        def forward_hook(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor | None:
            return fn(output, self)

        return self.register_forward_hook(forward_hook)


class ActivationCache(Mapping[str, Tensor]):
    """Activations of one forward pass by hook name (what :meth:`HookedModel.run_with_cache`
    returns). ``cache[name]``; ``cache.site(layer, "attn.pattern")``; ``cache.shapes()``."""

    def __init__(self, store: dict[str, Tensor], namer: Callable[[int, str], str] | None = None) -> None:
        self._store = store
        self._namer = namer

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._store:
            close = difflib.get_close_matches(name, list(self._store), n=3, cutoff=0.5)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise KeyError(f"cache: expected a cached hook name, got {name!r}{hint} "
                           f"({len(self._store)} cached; names_filter chose them)")
        return self._store[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def site(self, layer: int, site: str) -> Tensor:
        if self._namer is None:
            raise ValueError("cache.site: this cache has no model naming; index it by hook name")
        return self[self._namer(layer, site)]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self._store.items()}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._store.values())


def _matcher(names_filter: NameFilter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda n: True
    if isinstance(names_filter, str):
        return lambda n: n == names_filter
    if callable(names_filter):
        return names_filter
    if isinstance(names_filter, Sequence):
        wanted = set(names_filter)
        return wanted.__contains__
    raise TypeError(f"names_filter: expected a name, a list of names or a callable(name) -> bool, "
                    f"got {type(names_filter).__name__}")


class HookedModel(nn.Module):
    """Base of attnlab's models: hook points named by dotted path, added and removed by name.

    Subclasses call :meth:`setup_hooks` at the end of ``__init__`` and set ``blocks`` (the
    attribute holding the layers), ``attn_attr`` (each layer's attention) and ``mlp_post`` (the
    path of the MLP's hidden activation inside a layer) when theirs differ.
    """

    blocks: str = "layers"
    attn_attr: str = "attention"
    mlp_post: str = "mlp.hook_post"

    def setup_hooks(self) -> None:
        self._hook_points: dict[str, HookPoint] = {}
        for name, m in self.named_modules():
            if isinstance(m, HookPoint):
                m.name = name
                self._hook_points[name] = m

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (one device: a model is never split across devices);
        tools make their tensors there (:mod:`attnlab.models.device`)."""
        for t in itertools.chain(self.parameters(), self.buffers()):
            return t.device
        return torch.device("cpu")

    @property
    def hook_points(self) -> dict[str, HookPoint]:
        """Every hook point by dotted name, in the order the model was built."""
        if not hasattr(self, "_hook_points"):
            self.setup_hooks()
        return dict(self._hook_points)

    def hook_point(self, name: str) -> HookPoint:
        points = self.hook_points
        if not isinstance(name, str) or name not in points:
            close = difflib.get_close_matches(str(name), list(points), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"hook: expected a hook name of this {type(self).__name__} "
                             f"(e.g. {next(iter(points), 'none')}), got {name!r}{hint}")
        return points[name]

    def hook_name(self, layer: int, site: str) -> str:
        """Dotted name of ``site`` (one of :data:`SITES`) in ``layer``: ("attn.pattern", 3) ->
        "layers.3.attention.hook_pattern" here; another model's attributes give another path."""
        n = len(getattr(self, self.blocks))
        expect_int("layer", layer, -n, n - 1, expected=f"an int in 0..{n - 1}")
        s = site.removeprefix("hook_").replace(".hook_", ".")
        if s not in SITES:
            close = difflib.get_close_matches(s, SITES, n=2, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"site: expected one of {', '.join(SITES)}, got {site!r}{hint}")
        base = f"{self.blocks}.{layer % n}"
        if s.startswith("attn."):
            name = f"{base}.{self.attn_attr}.hook_{s[5:]}"
        elif s == "mlp.post":
            name = f"{base}.{self.mlp_post}"
        else:
            name = f"{base}.hook_{s}"
        self.hook_point(name)  # a model without that site says so, with close names
        return name

    def attention_module(self, layer: int) -> nn.Module:
        """The attention of ``layer`` (its projections: what per-head attribution reads)."""
        return self.get_submodule(self.hook_name(layer, "attn.z").rsplit(".", 1)[0])

    def add_hook(self, name: str | Callable[[str], bool], fn: HookFn) -> list[RemovableHandle]:
        """Add ``fn`` at one named hook point, or at every point whose name ``name(n)`` accepts.
        Prefer :meth:`hooks`, which removes them again."""
        if not callable(fn):
            raise TypeError(f"fn: expected a callable(activation, hook), got {type(fn).__name__}")
        if callable(name):
            chosen = [hp for n, hp in self.hook_points.items() if name(n)]
        else:
            chosen = [self.hook_point(name)]
        return [hp.add_hook(fn) for hp in chosen]

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = ()) -> Iterator[None]:
        """``with model.hooks([(name, fn), ...]):`` — hooks live for the block only, even on error."""
        handles: list[RemovableHandle] = []
        try:
            for name, fn in fwd_hooks:
                handles += self.add_hook(name, fn)
            yield
        finally:
            for h in handles:
                h.remove()

    def run_with_cache(self, *args: Any, names_filter: NameFilter = None, detach: bool = True,
                       fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
                       **kwargs: Any) -> tuple[Any, ActivationCache]:
        """Run the model and keep the activations whose names ``names_filter`` accepts (a name, a
        list, or a callable; None = all — large: filter to keep it small). ``fwd_hooks`` run
        first (a patched run's cache)."""
        match = _matcher(names_filter)
        store: dict[str, Tensor] = {}

        def keep(x: Tensor, hook: HookPoint) -> None:
            assert hook.name is not None
            store[hook.name] = x.detach() if detach else x

        with self.hooks([*fwd_hooks, (match, keep)]):
            out = self(*args, **kwargs)
        return out, ActivationCache(store, self.hook_name)

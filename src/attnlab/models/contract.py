"""The contract every decoder LLM in attnlab implements, so that tools never ask ``hasattr``.

Generation, the attention recorder, streaming, head detection and the prompt experiment take a
:class:`CausalLM`: a model that makes its own KV cache, says how many K/V heads its queries
share (GQA), which ids end a sequence, which layers attend and how far back each one sees
(Gemma 3 alternates 512-key windows with global layers), turns final-norm outputs into logits,
says which device its weights are on (tools make their tensors there) and names its hook points
(:class:`attnlab.modules.hooks.HookedModel`). ``forward`` takes the same keywords everywhere.
Llama, GPT-2 and Gemma 3 implement it; :func:`as_causal_lm` checks it and says what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from attnlab.models.common import ScoreMods, TransformerOutput
from attnlab.modules.hooks import ActivationCache, HookFn, HookPoint, NameFilter
from attnlab.modules.multihead import KVCache


@runtime_checkable
class CausalLM(Protocol):
    kind: str  # "decoder"

    @property
    def num_layers(self) -> int: ...

    @property
    def num_heads(self) -> int: ...

    @property
    def num_kv_heads(self) -> int: ...

    @property
    def max_positions(self) -> int: ...

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def device(self) -> torch.device:
        """Where the weights are: every tensor a tool feeds the model is made there."""
        ...

    def output_embedding(self, ids: Tensor) -> Tensor:
        """Rows of the unembedding matrix for token ids (n,): (n, E)."""
        ...

    def attention_module(self, layer: int) -> Any: ...

    def layer_window(self, layer: int) -> int | None:
        """Keys behind a query that layer ``layer`` sees (itself included); None = all."""
        ...

    def new_cache(self) -> list[KVCache]: ...

    def unembed(self, x: Tensor) -> Tensor:
        """Logits of final-norm outputs: (..., E) -> (..., V)."""
        ...

    @property
    def hook_points(self) -> dict[str, HookPoint]: ...

    def hook_name(self, layer: int, site: str) -> str: ...

    def add_hook(self, name: str | Callable[[str], bool], fn: HookFn) -> list[RemovableHandle]: ...

    def hooks(self, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = ()
              ) -> AbstractContextManager[None]: ...

    def run_with_cache(self, *args: Any, names_filter: NameFilter = None, detach: bool = True,
                       fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
                       **kwargs: Any) -> tuple[Any, ActivationCache]: ...

    def __call__(
        self,
        input_ids: Tensor,  # (B, L)
        attention_mask: Tensor | None = None,  # (B, L_past + L), 1 = token
        *,
        position_ids: Tensor | None = None,
        cache: list[KVCache] | None = None,
        mask: object = None,
        score_mods: ScoreMods | None = None,
        need_weights: bool | Collection[int] = False,
        keep_weights: bool = True,
        backend: str = "auto",
        logits_to_keep: int = 0,
    ) -> TransformerOutput: ...


_MEMBERS = ("kind", "num_layers", "num_heads", "num_kv_heads", "max_positions", "eos_token_ids",
            "vocab_size", "device", "output_embedding", "attention_module",
            "layer_window", "new_cache", "unembed", "hook_points", "hook_name", "add_hook", "hooks",
            "run_with_cache")


def as_causal_lm(model: object, what: str = "model") -> CausalLM:
    """``model`` typed as a :class:`CausalLM`, or a ValueError naming what it lacks."""
    missing = [m for m in _MEMBERS if not hasattr(model, m)]
    if missing or getattr(model, "kind", None) != "decoder":
        kind = getattr(model, "kind", None)
        why = f"is an {kind}" if kind == "encoder" else f"lacks {', '.join(missing) or 'kind = decoder'}"
        raise ValueError(f"{what}: expected a decoder LLM implementing attnlab's CausalLM contract "
                         f"(smollm2, gemma3, a llama/gpt2 folder or GGUF), got {type(model).__name__}, "
                         f"which {why}")
    assert isinstance(model, CausalLM)
    return model

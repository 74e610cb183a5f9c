"""transformers models through attnlab's attention (attn_implementation="attnlab", models/hf_bridge):
parity with transformers' eager attention on the same weights for six architectures, three attnlab
backends, two dtypes, with and without left padding; the mask interface against transformers' own
masks; generation with a cache; interventions and hook points; the hf_fallback integration."""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnlab.functional.masks import materialize  # noqa: E402
from attnlab.functional.masks.intervals import row_intervals  # noqa: E402
from attnlab.models import load_model  # noqa: E402
from attnlab.models.hf_bridge import (  # noqa: E402
    BridgeMask,
    attention_modules,
    attnlab_mask,
    bridge_interventions,
    register,
    tensor_mask,
)

from .conftest import bytelevel_tokenizer, save  # noqa: E402

ARCHS = ["llama", "mistral", "qwen2", "gemma2", "gemma3", "phi3"]
BACKENDS = ["eager", "sdpa", "tiled"]
TOL = {torch.float64: 1e-5, torch.float32: 1e-4}
L, START = 10, 4  # sequence length; the second sequence of the padded batch starts at START


def config(arch: str) -> Any:
    T = transformers
    common = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  initializer_range=0.3, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    gemma = dict(head_dim=8, query_pre_attn_scalar=8, sliding_window=4)
    return {
        "llama": lambda: T.LlamaConfig(**common),
        "mistral": lambda: T.MistralConfig(**common, sliding_window=4),
        "qwen2": lambda: T.Qwen2Config(**common, use_sliding_window=True, sliding_window=4,
                                       max_window_layers=1),  # layer 0 full, layer 1 sliding
        "gemma2": lambda: T.Gemma2Config(**common, **gemma, attn_logit_softcapping=5.0),
        "gemma3": lambda: T.Gemma3TextConfig(**common, **gemma,
                                             layer_types=["sliding_attention", "full_attention"]),
        "phi3": lambda: T.Phi3Config(**common, sliding_window=4),
    }[arch]()


@functools.cache
def pair(arch: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """(eager model, the same weights with attn_implementation="attnlab"), seeded."""
    register()
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(config(arch), attn_implementation="eager")
    ref = ref.to(dtype).eval()
    bridged = copy.deepcopy(ref)
    bridged.set_attn_implementation("attnlab")
    assert bridged.config._attn_implementation == "attnlab"
    return ref, bridged


def batch(padded: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (2, L), generator=g)
    if not padded:
        return {"input_ids": ids}
    am = torch.ones(2, L, dtype=torch.long)
    am[1, :START] = 0  # left padding
    ids[1, :START] = 0
    return {"input_ids": ids, "attention_mask": am, "position_ids": (am.cumsum(-1) - 1).clamp(min=0)}


def eager_reference(ref: Any, kw: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, list]:
    """Eager logits and weights of the batch. transformers' eager attention in float64 turns a
    left-padded batch into NaN (its softmax runs in float32, where finfo(float64).min is -inf, so
    padded query rows are NaN, and 0 * NaN reaches every row of the next layer): in float64 the
    padded sequence's reference is that sequence run alone (same positions)."""
    with torch.no_grad():
        out = ref(**kw, output_attentions=True)
        logits, weights = out.logits.clone(), [a.clone() for a in out.attentions]
        if "attention_mask" in kw and dtype == torch.float64:
            alone = ref(input_ids=kw["input_ids"][1:, START:], output_attentions=True)
            logits[1:, START:] = alone.logits
            for w, a in zip(weights, alone.attentions, strict=True):
                w[1:] = 0
                w[1:, :, START:, START:] = a
    return logits, weights


def valid_rows(padded: bool) -> torch.Tensor:
    rows = torch.ones(2, L, dtype=torch.bool)
    if padded:
        rows[1, :START] = False  # padded queries: eager averages every key, attnlab gives zeros
    return rows


@pytest.mark.parametrize("padded", [False, True], ids=["dense", "left-padded"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_and_weights_match_eager(arch, backend, dtype, padded):
    ref, bridged = pair(arch, dtype)
    kw = batch(padded)
    if arch == "gemma2" and backend == "sdpa":  # soft-capping is a score_mod: sdpa takes none
        no_mod = r"Gemma2Attention \(layer 0\).*'sdpa' does not take a score_mod"
        with pytest.raises(ValueError, match=no_mod), bridge_interventions(backend=backend), torch.no_grad():
            bridged(**kw)
        return
    want_logits, want_weights = eager_reference(ref, kw, dtype)
    with bridge_interventions(backend=backend), torch.no_grad():
        out = bridged(**kw, output_attentions=True)
    rows = valid_rows(padded)
    tol = TOL[dtype]
    assert out.logits.dtype == dtype
    assert (out.logits - want_logits)[rows].abs().max() < tol
    if backend == "sdpa":  # no weights from SDPA, as with transformers' own sdpa
        assert not out.attentions or all(a is None for a in out.attentions)
        return
    assert len(out.attentions) == 2
    for got, want in zip(out.attentions, want_weights, strict=True):
        assert got.shape == (2, 4, L, L)
        assert (got - want).permute(0, 2, 1, 3)[rows].abs().max() < tol  # (B, Lq, H, Lk)[rows]


def _hf_dense(mu: Any, geo: dict[str, Any], fn: Any, **kw: Any) -> torch.Tensor:
    return mu.sdpa_mask(mask_function=fn, allow_is_causal_skip=False, **geo, **kw)  # (B, 1, Lq, Lk)


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("geometry", [(6, 6, 0, 0), (1, 7, 6, 0), (2, 5, 7, 4), (3, 9, 6, 0)],
                         ids=["prefill", "decode", "sliding-cache", "chunk"])
@pytest.mark.parametrize("padding", ["none", "left", "right", "holes"])
def test_mask_interface_equals_transformers_masks_and_keeps_structure(window, geometry, padding):
    """attnlab_mask gives transformers' own masks (sdpa_mask, True = attend), with causal /
    sliding-window / padding structure the tiled kernel reads as key intervals."""
    mu = transformers.masking_utils
    Lq, Lk, qo, ko = geometry
    total = ko + Lk
    am = torch.ones(2, total, dtype=torch.bool)
    if padding == "left":
        am[1, :2] = False
    elif padding == "right":
        am[0, total - 1:] = False
    elif padding == "holes":
        am[1, 1] = am[1, 3] = False
    fn = mu.causal_mask_function if window is None else mu.sliding_window_causal_mask_function(window)
    geo = dict(batch_size=2, q_length=Lq, kv_length=Lk, q_offset=qo, kv_offset=ko,
               attention_mask=None if padding == "none" else am)
    got = attnlab_mask(mask_function=fn, local_size=window, **geo)
    assert isinstance(got, BridgeMask) and (got.q_offset, got.kv_offset) == (qo, ko)
    want = _hf_dense(mu, geo, fn)
    assert torch.equal(materialize(got.mask, Lq, Lk, batch=2), want.expand(2, 1, Lq, Lk))
    if padding != "holes":  # contiguous tokens: every row is one interval of keys
        assert row_intervals(got.mask, Lq, Lk) is not None
    # an overlay transformers cannot index without vmap: its own dense mask, unchanged
    dense = attnlab_mask(mask_function=mu.and_masks(fn, lambda b, h, q, kv: kv != ko), use_vmap=True, **geo)
    assert isinstance(dense.mask, torch.Tensor) and dense.mask.dtype == torch.bool


def test_dense_masks_are_converted_at_the_boundary():
    m = torch.zeros(1, 1, 3, 5)
    m[..., 4] = torch.finfo(torch.float32).min  # HF additive mask, longer than the call's keys
    out = tensor_mask(m, 3, 4)
    assert out.shape == (1, 1, 3, 4)
    assert torch.equal(tensor_mask(m.bool(), 3, 5), m.bool())
    with pytest.raises(ValueError, match=r"attention_mask: expected \(B, 1\|H, 3, >= 6\)"):
        tensor_mask(m, 3, 6)
    with pytest.raises(ValueError, match=r"dtype torch\.int64"):
        tensor_mask(m.long(), 3, 4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_with_cache_matches_eager(arch, backend):
    if arch == "gemma2" and backend == "sdpa":
        pytest.skip("gemma2's soft-capping needs a score_mod; sdpa takes none (tested above)")
    ref, bridged = pair(arch, torch.float32)
    kw = batch(True)
    del kw["position_ids"]  # generate derives them from the attention mask
    gen = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    with torch.no_grad():
        want = ref.generate(**kw, **gen)
        with bridge_interventions(backend=backend):
            got = bridged.generate(**kw, **gen)
    assert torch.equal(got, want), (got.tolist(), want.tolist())


def knockout(pos: int) -> Any:
    return lambda s, b, h, q, kv: torch.where(kv == pos, torch.full_like(s, float("-inf")), s)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_score_mod_knockout_in_one_layer_equals_eager_reference(arch):
    """Key 2 knocked out in layer 1 only: the eager reference gets the same change through the
    additive mask layer 1 receives (a forward pre-hook on its attention module)."""
    ref, bridged = pair(arch, torch.float64)
    kw = batch(False)

    def drop_key(_m, args, kwargs):
        mask = kwargs["attention_mask"].clone()  # (B, 1, Lq, Lk) additive
        mask[..., 2] = torch.finfo(mask.dtype).min
        return args, {**kwargs, "attention_mask": mask}

    handle = ref.model.layers[1].self_attn.register_forward_pre_hook(drop_key, with_kwargs=True)
    try:
        with torch.no_grad():
            want = ref(**kw).logits
    finally:
        handle.remove()
    with torch.no_grad():
        plain = bridged(**kw).logits
        with bridge_interventions(score_mods={1: knockout(2)}, backend="eager"):
            got = bridged(**kw).logits
    assert (got - plain).abs().max() > 1e-3  # it changed the output ...
    assert (got - want).abs().max() < 1e-5  # ... exactly as the eager reference
    with torch.no_grad(), bridge_interventions(mask=lambda b, h, q, kv: kv != 2, backend="tiled"):
        masked = bridged(**kw).logits  # a mask in every layer: rows >= 2 lose key 2 everywhere
    assert (masked - plain).abs().max() > 1e-3 and (masked - got).abs().max() > 1e-3


def test_interventions_use_absolute_positions_under_a_cache():
    """A knockout of key 2 gives the same tokens with and without a KV cache."""
    _, bridged = pair("mistral", torch.float32)
    kw = batch(True)
    del kw["position_ids"]
    gen = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    with torch.no_grad(), bridge_interventions(score_mods={0: knockout(2), 1: knockout(2)}):
        cached = bridged.generate(**kw, **gen)
        uncached = bridged.generate(**kw, **gen, use_cache=False)
    assert torch.equal(cached, uncached)


def test_hook_z_ablates_a_head_like_zeroing_its_slice_in_eager():
    ref, bridged = pair("qwen2", torch.float64)
    kw = batch(False)  # float64 eager NaNs a left-padded batch (eager_reference)
    mods = attention_modules(bridged)
    assert [m.layer_idx for m in mods] == [0, 1]
    head, dh = 1, 8

    def zero_z(_m, _i, z):  # (B, H, Lq, Dh)
        z = z.clone()
        z[:, head] = 0.0
        return z

    def zero_slice(_m, args):  # o_proj input (B, Lq, H·Dh)
        x = args[0].clone()
        x[..., head * dh:(head + 1) * dh] = 0.0
        return (x,)

    seen: dict[str, tuple[int, ...]] = {}
    hooks = mods[0].attnlab_hooks
    handles = [hooks.hook_z.register_forward_hook(zero_z),
               ref.model.layers[0].self_attn.o_proj.register_forward_pre_hook(zero_slice)]
    def record(name: str) -> Any:
        return lambda _m, _i, out: seen.__setitem__(name, tuple(out.shape))

    handles += [getattr(hooks, n).register_forward_hook(record(n))
                for n in ("hook_q", "hook_k", "hook_v", "hook_pattern")]
    try:
        with torch.no_grad():
            plain = ref(**kw).logits
            got = bridged(**kw).logits  # no output_attentions: hook_pattern still gets the weights
            handles[1].remove()
            unablated = ref(**kw).logits
    finally:
        for h in handles:
            h.remove()
    assert seen == {"hook_q": (2, 4, L, 8), "hook_k": (2, 2, L, 8), "hook_v": (2, 2, L, 8),
                    "hook_pattern": (2, 4, L, L)}
    assert (got - unablated).abs().max() > 1e-3
    assert (got - plain).abs().max() < 1e-5


def test_hook_pattern_replacement_recomputes_the_context():
    _, bridged = pair("llama", torch.float64)
    kw = batch(False)
    hooks = attention_modules(bridged)[1].attnlab_hooks
    with torch.no_grad():
        plain = bridged(**kw).logits
        h = hooks.hook_pattern.register_forward_hook(lambda m, i, w: w.clone())  # same values, new tensor
        same = bridged(**kw).logits
        h.remove()
        h = hooks.hook_pattern.register_forward_hook(lambda m, i, w: torch.full_like(w, 0.0))
        zeroed = bridged(**kw).logits
        h.remove()
    assert (same - plain).abs().max() < 1e-10 and (zeroed - plain).abs().max() > 1e-3
    h = hooks.hook_pattern.register_forward_hook(lambda m, i, w: None)
    try:
        with (pytest.raises(ValueError, match="hook_pattern: layer 1 has hooks, but backend 'sdpa'"),
              torch.no_grad(), bridge_interventions(backend="sdpa")):
            bridged(**kw)
    finally:
        h.remove()


def test_dropout_runs_in_training_only():
    cfg = config("llama")
    cfg.attention_dropout = 0.5
    register()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="attnlab").double()
    kw = batch(False)
    with torch.no_grad(), bridge_interventions(backend="eager"):
        model.eval()
        a, b = model(**kw).logits, model(**kw).logits
        model.train()
        c, d = model(**kw).logits, model(**kw).logits
    assert torch.equal(a, b) and not torch.equal(c, d) and not torch.equal(a, c)
    with (pytest.raises(ValueError, match="'tiled' does not do dropout"), torch.no_grad(),
          bridge_interventions(backend="tiled")):
        model(**kw)


def test_registration_is_lazy_and_idempotent():
    import subprocess
    import sys

    code = ("import sys, attnlab, attnlab.models, attnlab.models.hf_bridge; "
            "assert 'transformers' not in sys.modules, 'imported transformers'")
    subprocess.run([sys.executable, "-c", code], check=True)
    register()
    register()
    from attnlab.models.hf_bridge import attnlab_attention

    assert transformers.AttentionInterface._global_mapping["attnlab"] is attnlab_attention
    assert transformers.masking_utils.AttentionMaskInterface._global_mapping["attnlab"] is attnlab_mask


def test_attnlab_current_backend_is_used_unless_the_context_names_one():
    import attnlab

    _, bridged = pair("gemma2", torch.float32)
    kw = batch(False)
    with attnlab.use_backend("sdpa"), torch.no_grad():
        with pytest.raises(ValueError, match="'sdpa' does not take a score_mod"):
            bridged(**kw)
        with bridge_interventions(backend="tiled"):
            assert bridged(**kw).logits.isfinite().all()


def test_bad_backend_name_is_refused():
    with (pytest.raises(ValueError, match=r"backend: expected one of \['auto', .*'eager'.*\], got 'nope'"),
          bridge_interventions(backend="nope")):
        pass
    with (pytest.raises(ValueError, match=r"score_mods: expected layer indices"),
          bridge_interventions(score_mods={-1: knockout(0)})):
        pass


def _folder(tmp_path, arch_cfg: Any, cls: Any) -> Any:
    tmp_path.mkdir(parents=True, exist_ok=True)
    arch_cfg.vocab_size = bytelevel_tokenizer(tmp_path)
    torch.manual_seed(0)
    save(cls(arch_cfg).eval(), tmp_path)
    return tmp_path


def test_fallback_decoder_runs_masks_score_mods_and_backends_through_attnlab(tmp_path):
    from attnlab.functional.masks import sliding_window

    folder = _folder(tmp_path / "mistral", config("mistral"), transformers.MistralForCausalLM)
    lm = load_model(folder)
    assert lm.engine == "transformers" and lm.kind == "decoder" and lm.model.bridged
    assert len(lm.model.attention_modules()) == 2
    enc = lm.encode("the animal was too tired")
    hf = transformers.AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    with torch.no_grad():
        want = hf(input_ids=torch.tensor([enc.ids]), output_attentions=True).attentions
    out = lm.forward(enc)  # plain capture: weights as before
    for got, w in zip(out.attentions, want, strict=True):
        assert (got - w).abs().max() < 1e-5
    windowed = lm.forward(enc, mask=sliding_window(1), backend="tiled", need_weights=True)
    assert bool((windowed.attentions[1][0, :, 3, :2] == 0).all())  # row 3 sees keys 2..3 only
    knocked = lm.forward(enc, score_mods={0: knockout(0)}, backend="eager")
    assert (knocked.last_hidden_state - out.last_hidden_state).abs().max() > 1e-4
    with pytest.raises(ValueError, match="backend: expected one of"):
        lm.forward(enc, backend="nope")
    with pytest.raises(ValueError, match=r"need_weights: backend 'sdpa' cannot return"):
        lm.forward(enc, backend="sdpa", need_weights=True)
    with pytest.raises(ValueError, match=r"score_mods: expected layer keys in 0\.\.1"):
        lm.forward(enc, score_mods={5: knockout(0)})


def test_model_without_interface_support_is_named_with_the_reason(tmp_path):
    cfg = transformers.BloomConfig(hidden_size=32, n_layer=2, n_head=4)
    folder = _folder(tmp_path / "bloom", cfg, transformers.BloomForCausalLM)
    lm = load_model(folder)
    assert lm.kind == "decoder" and not lm.model.bridged
    enc = lm.encode("the animal")
    assert lm.forward(enc).attentions is not None  # plain capture still works (eager)
    with pytest.raises(ValueError, match=r"mask: .*'bloom' \(BloomModel\): its attention does not go "
                                         r"through transformers' AttentionInterface"):
        lm.forward(enc, mask=lambda b, h, q, kv: kv <= q)


def test_named_hooks_reach_a_bridged_folder_model_by_layer(tmp_path):
    from attnlab.inspect.patching import Ablation, ablated, patch_effect

    folder = _folder(tmp_path / "qwen2", config("qwen2"), transformers.Qwen2ForCausalLM)
    lm = load_model(folder)
    assert lm.hookable and not lm.native
    net = lm.model
    name = net.hook_name(1, "attn.z")
    assert name.endswith("layers.1.self_attn.attnlab_hooks.hook_z") and name in net.hook_points
    enc = lm.encode("the animal was too tired")
    _, cache = net.run_with_cache(torch.tensor([enc.ids]), names_filter=net.hook_name(0, "attn.pattern"))
    assert cache.site(0, "attn.pattern").shape[-2:] == (len(enc), len(enc))
    base = lm.forward(enc).last_hidden_state
    with ablated(lm, [Ablation(1, 0)]):
        ablated_out = lm.forward(enc).last_hidden_state
    assert (ablated_out - base).abs().max() > 1e-5
    assert torch.equal(lm.forward(enc).last_hidden_state, base)  # hooks gone after the block
    assert patch_effect(lm, enc, ablate=[Ablation(0, 1)]).max_abs_change > 0
    with pytest.raises(ValueError, match=r"site: expected one of attn\.q"):
        net.hook_name(0, "resid_pre")

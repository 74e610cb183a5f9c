"""A/B of the tiled backend between two checkouts in one session (issues 15 and 26: no behaviour change).

    python benchmarks/tiled_ab.py OLD_CHECKOUT/src [fwd|fwd+bwd]   # then the new src, alternating

Prints the median of 5 calls (after one warm-up) for four patterns, B=1, H=8, Dh=64: the forward
(default), or forward and backward at half the lengths (``fwd+bwd``).
"""
import sys, time, torch, statistics
sys.path.insert(0, sys.argv[1])
mode = sys.argv[2] if len(sys.argv) > 2 else "fwd"
assert mode in ("fwd", "fwd+bwd"), f"mode: expected fwd or fwd+bwd, got {mode!r}"
import attnlab
from attnlab import masks
print(attnlab.__file__, mode)
torch.manual_seed(0)
res = {}
for name, n, m in [("sw256", 16384, masks.sliding_window(256, 0)), ("causal", 8192, masks.causal()), ("strided", 16384, masks.sparse_transformer_strided(128)), ("bigbird", 16384, masks.bigbird(64,3,2,3))]:
    grad = mode == "fwd+bwd"
    n = n // 2 if grad else n
    q, k, v = (torch.randn(1, 8, n, 64, requires_grad=grad) for _ in range(3))
    if grad:
        f = lambda: attnlab.attention(q, k, v, mask=m, backend="tiled").context.sum().backward()
    else:
        f = lambda: attnlab.attention(q, k, v, mask=m, backend="tiled")
    f()
    ts = []
    for _ in range(5):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    print(name, round(statistics.median(ts) * 1000, 1), "ms")

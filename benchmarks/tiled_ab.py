"""A/B of the tiled backend between two checkouts in one session (issue 15: no behaviour change).

    python benchmarks/tiled_ab.py OLD_CHECKOUT/src   # then the same with the new src, alternating

Prints the median of 5 forward calls (after one warm-up) for four patterns, B=1, H=8, Dh=64.
"""
import sys, time, torch, statistics
sys.path.insert(0, sys.argv[1])
import attnlab
from attnlab import masks
print(attnlab.__file__)
torch.manual_seed(0)
res = {}
for name, n, m in [("sw256", 16384, masks.sliding_window(256, 0)), ("causal", 8192, masks.causal()), ("strided", 16384, masks.sparse_transformer_strided(128)), ("bigbird", 16384, masks.bigbird(64,3,2,3))]:
    q, k, v = (torch.randn(1, 8, n, 64) for _ in range(3))
    f = lambda: attnlab.attention(q, k, v, mask=m, backend="tiled")
    f()
    ts = []
    for _ in range(5):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    print(name, round(statistics.median(ts) * 1000, 1), "ms")

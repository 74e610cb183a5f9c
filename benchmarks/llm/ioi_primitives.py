"""The interpretability primitives on SmolLM2-135M-Instruct, on one indirect-object sentence
(Wang et al. 2022): logit lens, direct logit attribution per head, activation patching of the
residual stream and of every head, clean -> corrupted (the repeated name swapped).

    .venv/bin/python benchmarks/llm/ioi_primitives.py --out benchmarks/llm/ioi

writes result.json, resid_pre.png and heads.png there and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from attnlab.inspect.llm.activation_patching import activation_patching, logit_diff
from attnlab.inspect.llm.lens import direct_logit_attribution, logit_lens
from attnlab.models import load_model

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("smollm2")
    mary, john = (lm.tokenizer.piece_ids(w)[0] for w in (" Mary", " John"))
    t0 = time.perf_counter()
    lens = logit_lens(lm, CLEAN)
    ranks = lens.rank(mary)
    att = direct_logit_attribution(lm, CLEAN, mary, john)
    resid = activation_patching(lm, CLEAN, CORRUPT, logit_diff(mary, john), site="resid_pre")
    heads = activation_patching(lm, CLEAN, CORRUPT, logit_diff(mary, john), site="head")
    seconds = time.perf_counter() - t0
    top = heads.scores.flatten().topk(5)
    H = lm.num_heads
    result = {
        "command": "benchmarks/llm/ioi_primitives.py", "clean": CLEAN, "corrupted": CORRUPT,
        "logit_diff_clean": resid.clean, "logit_diff_corrupted": resid.corrupted,
        "lens_rank_of_Mary_by_layer": dict(zip(lens.layers, ranks, strict=True)),
        "first_layer_Mary_top1": next((n for n, r in zip(lens.layers, ranks, strict=True) if r == 0), None),
        "dla": att.to_dict(k=8),
        "head_patching_top": [{"layer": int(i) // H, "head": int(i) % H, "restored": round(float(v), 3)}
                              for v, i in zip(top.values, top.indices, strict=True)],
        "resid_pre_patching": resid.to_dict(),
        "seconds": round(seconds, 1), "threads": args.threads,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    resid.plot(args.out / "resid_pre.png")
    heads.plot(args.out / "heads.png")
    print(json.dumps({k: result[k] for k in ("logit_diff_clean", "logit_diff_corrupted",
                                              "first_layer_Mary_top1", "head_patching_top", "seconds")}))
    print("dla top:", [(p["part"], round(p["value"], 2)) for p in result["dla"]["top"]])


if __name__ == "__main__":
    main()

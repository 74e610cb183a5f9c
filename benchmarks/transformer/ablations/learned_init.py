"""What the learned-positions table's initial scale does (docs/transformer.md, ablations).

attnlab initialises the table N(0, 1/d) (fairseq). This script retrains, with the table
patched to another start, the two models that use learned positions:

- ``translator``: the ablations experiment's h4-learned translator (1000 steps, 2 threads);
- ``induction``: the induction experiment's 2-layer attention-only LM (2500 steps, 2 threads;
  the experiment itself runs at 1 thread, so its seed-0 run is not this script's).

Modes: ``default`` = attnlab's own init (no patch); ``std1`` = N(0, 1); ``scaled`` = N(0, 1/d)
multiplied by √d in the forward pass (the same start as std1, but Adam moves it √d times faster,
like the tokens).

    .venv/bin/python benchmarks/transformer/ablations/learned_init.py translator std1 --out /tmp/li
    for seed in 0 1 2; do for mode in default std1 scaled; do
      .venv/bin/python benchmarks/transformer/ablations/learned_init.py induction $mode --seed $seed
    done; done

A patched std1 draws the table twice (attnlab's draw, then N(0, 1)), so every parameter after
it gets other random numbers than in an unpatched run: compare modes as different draws.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import Tensor, nn

import attnlab.models.transformer.layers as layers


def patch(mode: str) -> None:
    init, forward = layers.InputEmbedding.__init__, layers.InputEmbedding.forward

    def new_init(self: layers.InputEmbedding, *a: object, **k: object) -> None:
        init(self, *a, **k)  # type: ignore[arg-type]
        if self.table is not None and mode == "std1":
            nn.init.normal_(self.table.weight, std=1.0)

    def new_forward(self: layers.InputEmbedding, ids: Tensor, offset: int = 0) -> Tensor:
        if mode != "scaled" or self.table is None:
            return forward(self, ids, offset)
        pos = torch.arange(offset, offset + ids.shape[1], device=ids.device)  # (L,)
        x = (self.tokens(ids) + self.table(pos)) * math.sqrt(self.d_model)  # (B, L, D)
        return self.drop(x)

    layers.InputEmbedding.__init__ = new_init  # type: ignore[method-assign]
    layers.InputEmbedding.forward = new_forward  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=["translator", "induction"])
    ap.add_argument("mode", choices=["default", "std1", "scaled"])
    ap.add_argument("--seed", type=int, default=0, help="induction: InductionConfig.seed")
    ap.add_argument("--out", default="/tmp/learned-init", help="translator run folder")
    args = ap.parse_args()
    patch(args.mode)
    torch.set_num_threads(2)
    if args.model == "translator":
        from attnlab.training.experiments.ablations import variant_configs
        from attnlab.training.experiments.common import train_one

        cfg = variant_configs(threads=2)["h4-learned"]
        r = train_one(cfg.to_dict(), f"{args.out}/{args.mode}", 2)
        print(f"translator {args.mode}: test BLEU {r['test']['bleu']}, "
              f"best valid BLEU {r['best_valid_bleu']}")
    else:
        from attnlab.training.experiments.induction import InductionConfig, train_one

        c = train_one(InductionConfig(seed=args.seed), 2)
        print(f"induction {args.mode} seed {args.seed}: 2-layer repeat accuracy {c.repeat_accuracy[-1]}, "
              f"best induction score {max(c.best_induction)} (last {c.best_induction[-1]})")


if __name__ == "__main__":
    main()

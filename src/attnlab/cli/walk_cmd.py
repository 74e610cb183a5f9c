"""``attnlab walk``: the attention arithmetic, step by step."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from attnlab.cli.common import (
    console,
    parse_json,
    parse_json_option,
    print_json,
    split_tokens,
    user_errors,
)
from attnlab.explain.examples import EXAMPLES  # plain data: no torch before the command runs

MAX_ROWS = 64  # rows of --q/--k/--v (and dims): walk spells out matrices a person can follow


def _parse_perturb(spec: str) -> tuple[str, int, float]:
    parts = spec.split(":")
    if len(parts) != 3:
        raise ValueError(f"--perturb: expected TOKEN:DIM:DELTA (e.g. sat:2:+0.5), got {spec!r}")
    try:
        tok, dim, delta = parts[0], int(parts[1]), float(parts[2])
    except ValueError:
        raise ValueError(f"--perturb: expected an int DIM and a number DELTA, got {spec!r}") from None
    if not math.isfinite(delta):
        raise ValueError(f"--perturb: expected a finite DELTA, got {parts[2]!r}")
    return tok, dim, delta


def _check_size(name: str, m: object) -> None:
    """Refuse what walk cannot show before computing it: its tables grow as rows x rows."""
    if not isinstance(m, list):
        return  # walk() names the shape it expected
    dims = max((len(r) for r in m if isinstance(r, list)), default=0)
    for what, n in (("rows", len(m)), ("numbers per row", dims)):
        if n > MAX_ROWS:
            raise ValueError(f"{name}: expected at most {MAX_ROWS} {what} (walk prints every step for a "
                             f"person to follow), got {n}; walk a slice of it (e.g. its first "
                             f"{MAX_ROWS} rows), or use attnlab.attention on full-size tensors")


def walk_command(
    example: Annotated[str | None, typer.Option(help=f"built-in example: {', '.join(EXAMPLES)}")] = None,
    q: Annotated[str | None, typer.Option("--q", help="queries as JSON, e.g. [[1,0],[0,1]]")] = None,
    k: Annotated[str | None, typer.Option("--k", help="keys as JSON (default: q)")] = None,
    v: Annotated[str | None, typer.Option("--v", help="values as JSON (default: k)")] = None,
    file: Annotated[Path | None,
                    typer.Option(help='JSON file {"q":..,"k":..,"v":..,"tokens":..}')] = None,
    tokens: Annotated[str | None, typer.Option(help="token labels, comma- and/or space-separated: one "
                                                    "per key (and per query when q = k)")] = None,
    scale: Annotated[bool | None, typer.Option("--scale/--no-scale",
                                               help="divide by sqrt(d) (default: as the example)")] = None,
    focus: Annotated[str | None, typer.Option(help="query token whose arithmetic is spelled out")] = None,
    perturb_spec: Annotated[str | None,
                            typer.Option("--perturb", help="TOKEN:DIM:DELTA, e.g. sat:2:+0.5")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Print attention step by step: Q·Kᵀ, scaling, softmax, weighted sum."""
    # walk() names its parameters (q, k, v, q_tokens, perturb); say which option held them.
    names = {"q": "--q" if q else "--file q", "k": "--k" if k else ("--file k" if file else "--q"),
             "v": "--v" if v else ("--file v" if file else "--k"), "q/k/v": "--q/--k/--v" if q else "--file",
             "q_tokens": "--tokens", "k_tokens": "--tokens", "perturb": "--perturb"}
    with user_errors(as_json, names):
        from attnlab.explain.walkthrough import perturb, walk, walk_example

        if example is not None and (q or file):
            raise ValueError("--example: expected either --example or --q/--file, got both")
        if q or file:
            data = {}
            if file is not None:
                if not file.is_file():
                    raise FileNotFoundError(f"--file: expected a JSON file, got {file} (not found)")
                data = parse_json("--file", file.read_text())
                if not isinstance(data, dict):
                    raise ValueError(f'--file: expected a JSON object {{"q": ..}}, got {type(data).__name__}')
            qm = parse_json_option("--q", q) if q else data.get("q")
            km = parse_json_option("--k", k) if k else data.get("k", qm)
            vm = parse_json_option("--v", v) if v else data.get("v", km)
            for name, m in ((names["q"], qm), (names["k"], km), (names["v"], vm)):
                _check_size(name, m)
            labels = split_tokens(tokens) if tokens else data.get("tokens")
            ql, kl = _labels(labels, qm, km)
            w = walk(qm, km, vm, scale=True if scale is None else scale, q_tokens=ql, k_tokens=kl)
        else:
            name = example or "cat-sat"
            if name not in EXAMPLES:
                raise ValueError(f"--example: expected one of {list(EXAMPLES)}, got {name!r}")
            w = walk_example(EXAMPLES[name], scale=scale)
        row = None
        if focus is not None:
            if focus not in w.q_tokens:
                raise ValueError(f"--focus: expected a query token among {w.q_tokens}, got {focus!r}")
            row = w.q_tokens.index(focus)
        p = None
        if perturb_spec:
            tok, dim, delta = _parse_perturb(perturb_spec)
            try:
                p = perturb(w, tok, dim, delta)
            except ValueError as e:  # a bad token/dim, or a DELTA that overflows the scores
                raise ValueError(f"--perturb: {str(e).partition(': ')[2] or e}") from None
    if as_json:
        out = w.to_dict()
        if p is not None:
            out["perturbation"] = p.to_dict()
        print_json(out)
        return
    from attnlab.explain.render import print_walkthrough, render_perturbation

    print_walkthrough(w, console, focus=row)
    if p is not None:
        console.print(render_perturbation(p))


def register(app: typer.Typer) -> None:
    app.command("walk")(walk_command)


def _labels(labels: object, qm: object, km: object) -> tuple[list[str] | None, list[str] | None]:
    """(query labels, key labels) from one --tokens list: it names the keys, and the queries too
    when there are as many; any other count is an error (it used to be dropped silently)."""
    if not labels:
        return None, None
    if not isinstance(labels, list):
        raise ValueError(f"--tokens: expected a list of labels, got {type(labels).__name__}")
    n_q = len(qm) if isinstance(qm, list) else None
    n_k = len(km) if isinstance(km, list) else None
    names = [str(t) for t in labels]
    if n_k is not None and len(names) == n_k:
        return (names if n_q == n_k else None), names
    if n_q is not None and len(names) == n_q:
        return names, None
    want = f"{_n(n_k, 'label')} (one per row of --q and --k)" if n_q == n_k else \
        f"{_n(n_k, 'label')} (one per key row of --k) or {n_q} (one per query row of --q)"
    raise ValueError(f"--tokens: expected {want}, got {len(names)}: {names}")


def _n(n: int | None, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"

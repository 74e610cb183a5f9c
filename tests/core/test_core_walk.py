import json
import math

import pytest
from typer.testing import CliRunner

from attnlab.cli.main import app
from attnlab.explain import EXAMPLES, perturb
from attnlab.explain.walkthrough import walk, walk_example

runner = CliRunner()


def test_cat_sat_exact_values_and_seed_rounding_flags():
    w = walk_example(EXAMPLES["cat-sat"])
    assert [round(x, 10) for x in w.scores[2]] == [0.61, 0.89, 0.77]
    e = [math.exp(x) for x in (0.61, 0.89, 0.77)]
    assert w.weights[2] == pytest.approx([x / sum(e) for x in e], abs=1e-12)
    verdict = {c.claim.what: c.agrees for c in w.checks}
    assert verdict == {"scores": True, "weights": False, "context": False}


def test_library_and_it_examples():
    lib = walk_example(EXAMPLES["library"])
    assert lib.weights[0].index(max(lib.weights[0])) == 0  # the ML/Python book wins
    assert lib.context[0] == pytest.approx(lib.weights[0])  # one-hot values: context = weights
    it = walk_example(EXAMPLES["it"])
    assert it.weights[0] == pytest.approx([1 / 3] * 3) and it.checks[0].agrees


def test_scaling_divides_by_sqrt_d():
    w = walk([[1.0, 2.0, 3.0, 4.0]], [[1.0, 0, 0, 0], [0, 0, 0, 1.0]], scale=True)
    assert w.scale == 0.5 and w.scores[0] == [0.5, 2.0]


def test_perturb_moves_routing():
    w = walk_example(EXAMPLES["cat-sat"])
    p = perturb(w, "sat", 1, 2.0)
    assert p.after.weights[2][0] > p.before.weights[2][0]  # towards "The" (big d1)
    assert sum(p.shift()) == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="perturb: expected a query token"):
        perturb(w, "dog", 0, 1.0)


def test_cli_walk_text_json_and_user_vectors():
    r = runner.invoke(app, ["walk", "--example", "cat-sat"])
    assert r.exit_code == 0 and "0.2860" in r.output and "differs" in r.output
    r = runner.invoke(app, ["walk", "--example", "library", "--json"])
    data = json.loads(r.output)
    assert data["k_tokens"][0] == "ML algorithms Python" and len(data["weights"][0]) == 3
    r = runner.invoke(app, ["walk", "--q", "[[1,0],[0,1]]", "--tokens", "a,b", "--no-scale",
                            "--perturb", "a:1:3", "--json"])
    data = json.loads(r.output)
    assert data["scale"] == 1.0 and data["perturbation"]["weights_after"][1] > 0.5


@pytest.mark.parametrize(
    ("args", "msg"),
    [(["--example", "nope"], "--example: expected one of"),
     (["--q", "[[1,0],[0]]"], "q: expected a list"),
     (["--q", "not json"], "--q: expected JSON"),
     (["--q", "[[1,0]]", "--k", "[[1,0,0]]"], "k: expected 2 dims per row"),
     (["--example", "cat-sat", "--perturb", "sat:9:1"], "perturb: expected a dim"),
     (["--example", "cat-sat", "--focus", "dog"], "--focus")],
)
def test_cli_walk_bad_input_is_one_clear_line(args, msg):
    r = runner.invoke(app, ["walk", *args])
    assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output


def test_cli_backends_json():
    r = runner.invoke(app, ["backends", "--explain", "--json"])
    data = json.loads(r.output)
    assert {b["name"] for b in data["backends"]} >= {"eager", "sdpa"} and "auto" in data["auto_rule"]


@pytest.mark.parametrize("args", [
    ["walk", "--q", "[[1, 0]", "--json"],  # walk_cmd
    ["plot-mask", "--mask", "window:-1,0", "--q-len", "4", "--json"],  # viz_cmds
    ["serve", "--port", "0", "--json"],  # model_cmds
    ["bench", "--quick", "--n", "0", "--json"],  # bench_cmd
])
def test_every_command_group_reports_bad_input_as_json_with_exit_2(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    err = json.loads(res.stdout.strip().splitlines()[-1])["error"]
    assert isinstance(err, str) and err

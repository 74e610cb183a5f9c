"""The paired-effect statistics: intervals cover the truth about as often as they claim (seeded
simulations of a prompts x samples design), the verdict follows the interval, runs repeat by
seed, and bad input is refused naming the argument."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from attnlab.inspect.stats import (
    Effect,
    bonferroni_level,
    compare_to_base,
    effect,
    paired_difference,
    proportion_difference,
    ratio_of_means,
    verdict,
)

P, S, SIMS = 24, 4, 200


def design(rng: np.random.Generator, tau: float, p: int = P, s: int = S) -> tuple[np.ndarray, np.ndarray]:
    """Prompt levels shared by A and B, a prompt-specific response to B, sample noise."""
    level = rng.normal(0, 1, (p, 1))
    a = level + rng.normal(0, 0.5, (p, s))
    b = level + tau + rng.normal(0, 0.3, (p, 1)) + rng.normal(0, 0.5, (p, s))
    return a, b


def simulate(tau: float, **kw) -> tuple[float, float, list[str]]:
    covered = excluded0 = 0
    statuses = []
    for i in range(SIMS):
        e = paired_difference(*design(np.random.default_rng(10_000 + i), tau), seed=i, **kw)
        covered += e.covers(tau)
        excluded0 += not e.covers(0.0)
        statuses.append(verdict(e).status)
    return covered / SIMS, excluded0 / SIMS, statuses


def test_known_effect_interval_covers_the_truth_at_about_the_level_and_excludes_zero():
    coverage, excluded0, statuses = simulate(0.4)
    assert 0.90 <= coverage <= 0.99
    assert excluded0 >= 0.9
    assert statuses.count("shown") / SIMS >= 0.9


def test_null_effect_interval_covers_zero_about_95_percent_and_is_not_shown():
    coverage, excluded0, statuses = simulate(0.0)
    assert 0.90 <= coverage <= 0.99
    assert statuses.count("not shown") / SIMS == pytest.approx(coverage)
    assert statuses.count("shown") + statuses.count("reversed") == round(excluded0 * SIMS)


def test_reversed_effect_is_called_reversed():
    a, b = design(np.random.default_rng(1), -0.8)
    v = verdict(paired_difference(a, b), direction="increase", condition="+ topic", quantity="topic mass")
    assert v.status == "reversed"
    assert v.sentence.startswith("Reversed: + topic lowers topic mass by")
    assert verdict(v.effect, direction="decrease").status == "shown"


def test_two_stage_bootstrap_is_wider_than_the_cluster_bootstrap():
    a, b = design(np.random.default_rng(2), 0.2)
    one, both = paired_difference(a, b), paired_difference(a, b, resample="both")
    assert both.high - both.low > one.high - one.low
    assert "two-stage" in both.method and "cluster" in one.method
    assert one.estimate == both.estimate == pytest.approx(float((b - a).mean()))


def test_greedy_one_sample_per_prompt_as_a_1d_array():
    a, b = design(np.random.default_rng(3), 0.5, s=1)
    e = paired_difference(a[:, 0], b[:, 0])
    assert (e.n_prompts, e.n_samples) == (P, 1)
    assert e == paired_difference(a, b)


def test_ratio_of_means_covers_the_true_ratio():
    covered = 0
    for i in range(SIMS):
        rng = np.random.default_rng(20_000 + i)
        level = rng.gamma(4.0, 0.05, (P, 1))  # a topic mass: positive, skewed across prompts
        a = level * rng.gamma(8.0, 1 / 8, (P, S))
        b = 1.5 * level * rng.gamma(8.0, 1 / 8, (P, S))
        e = ratio_of_means(a, b, seed=i)
        covered += e.covers(1.5)
    assert e.null == 1.0 and e.measure == "ratio"
    assert 0.88 <= covered / SIMS <= 0.99


def test_proportion_difference_covers_the_true_difference():
    covered = 0
    for i in range(SIMS):
        rng = np.random.default_rng(30_000 + i)
        base = rng.uniform(0.1, 0.5, (P, 1))
        a = rng.random((P, S)) < base
        b = rng.random((P, S)) < base + 0.2
        e = proportion_difference(a, b, seed=i)
        covered += e.covers(0.2)
    assert 0.88 <= covered / SIMS <= 0.99


def test_same_seed_same_interval_other_seed_other_interval():
    a, b = design(np.random.default_rng(4), 0.3)
    for kw in ({}, {"resample": "both"}, {"interval": "bca"}, {"interval": "percentile"}):
        assert paired_difference(a, b, seed=7, **kw) == paired_difference(a, b, seed=7, **kw)
    assert paired_difference(a, b, seed=7).low != paired_difference(a, b, seed=8).low


def test_interval_variants_agree_roughly_and_expanded_is_widest_of_the_percentiles():
    a, b = design(np.random.default_rng(5), 0.3)
    ex, pc, bca = (paired_difference(a, b, interval=k) for k in ("expanded", "percentile", "bca"))
    assert ex.low < pc.low and ex.high > pc.high
    assert abs(bca.low - pc.low) < 0.1 and abs(bca.high - pc.high) < 0.1


def test_compare_to_base_adjusts_the_level_and_keeps_the_family_coverage():
    assert bonferroni_level(0.95, 4) == pytest.approx(0.9875)
    held = 0
    for i in range(100):
        rng = np.random.default_rng(40_000 + i)
        level = rng.normal(0, 1, (P, 1))
        a, *bs = (level + rng.normal(0, 0.3, (P, 1)) * (j > 0) + rng.normal(0, 0.5, (P, S)) for j in range(4))
        fam = compare_to_base(a, {f"c{j}": b for j, b in enumerate(bs)}, seed=i)
        held += all(e.covers(0.0) for e in fam.effects.values())
    assert held / 100 >= 0.9
    assert fam.per_comparison_level == pytest.approx(1 - 0.05 / 3)
    assert all(e.family_size == 3 and e.level == fam.per_comparison_level for e in fam.effects.values())
    assert "98.33 % interval" in fam.verdicts["c0"].sentence
    assert "Bonferroni-adjusted for 3 comparisons" in fam.verdicts["c0"].sentence
    json.dumps(fam.to_dict())


def test_adjusted_intervals_are_wider_than_single_ones():
    a, b = design(np.random.default_rng(6), 0.3)
    fam = compare_to_base(a, {"x": b, "y": b + 1})
    assert fam.effects["x"].high - fam.effects["x"].low > paired_difference(a, b).high - paired_difference(
        a, b).low


def test_verdict_sentences_and_to_dict():
    a, b = design(np.random.default_rng(8), 0.0)
    v = verdict(paired_difference(a, b), condition="+ Make it secure.", quantity="security words")
    assert v.status == "not shown"
    assert "covers 0" in v.sentence and "95 % interval" in v.sentence and f"{P} prompts x {S}" in v.sentence
    d = json.loads(json.dumps(v.to_dict()))
    assert d["status"] == "not shown" and d["effect"]["n_prompts"] == P
    e = Effect(estimate=2.0, low=1.2, high=math.inf, n_prompts=3, n_samples=1, method="m", measure="ratio",
               null=1.0)
    assert e.to_dict()["high"] is None
    assert verdict(e).sentence == ("Shown: B multiplies the measure by 2 (95 % interval 1.2 to infinity, "
                                   "3 prompts x 1 sample); the interval excludes 1.")


@pytest.mark.parametrize(("a", "b", "kw", "match"), [
    (np.zeros((4, 3)), np.zeros((4, 2)), {}, r"^b: expected the shape of a \(4, 3\).*got \(4, 2\)"),
    (np.zeros((0, 3)), np.zeros((0, 3)), {}, r"^a: expected at least one prompt and one sample, got shape"),
    (np.zeros((4, 0)), np.zeros((4, 0)), {}, r"^a: expected at least one prompt"),
    (np.zeros((1, 3)), np.zeros((1, 3)), {}, r"^a: expected at least 2 prompts"),
    (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), {}, r"^a: expected a \(prompts, samples\) array, got 3"),
    (np.zeros((4, 3)), np.array([[0, 0, 0]] * 3 + [[0, np.nan, 0]]), {},
     r"^b: expected finite numbers, got nan at \[prompt 3, sample 1\]"),
    (np.full((4, 3), np.inf), np.zeros((4, 3)), {}, r"^a: expected finite numbers, got inf"),
    ([["x"]], [["y"]], {}, r"^a: expected numbers"),
    (np.zeros((4, 3)), np.zeros((4, 3)), {"level": 1.5}, r"^level: expected a number in \(0, 1\).*got 1.5"),
    (np.zeros((4, 3)), np.zeros((4, 3)), {"level": 0}, r"^level: expected a number in \(0, 1\)"),
    (np.zeros((4, 3)), np.zeros((4, 3)), {"level": True}, r"^level: .*got True"),
    (np.zeros((4, 3)), np.zeros((4, 3)), {"n_boot": 10}, r"^n_boot: expected an integer >= 100, got 10"),
    (np.zeros((4, 3)), np.zeros((4, 3)), {"seed": -1}, r"^seed: expected an integer >= 0"),
    (np.zeros((4, 3)), np.zeros((4, 3)), {"measure": "median"}, r"^measure: expected one of"),
    (np.zeros((4, 3)), np.zeros((4, 3)), {"resample": "samples"}, r"^resample: expected"),
    (np.zeros((4, 3)), np.zeros((4, 3)), {"interval": "normal"}, r"^interval: expected"),
    (np.zeros((4, 3)), np.full((4, 3), 0.5), {"measure": "proportion"}, r"^b: expected 0/1 or True/False"),
    (np.zeros((4, 3)), np.ones((4, 3)), {"measure": "ratio"}, r"^a: expected a positive mean"),
    (np.ones((4, 3)), -np.ones((4, 3)), {"measure": "ratio"}, r"^b: expected values >= 0"),
])
def test_bad_inputs_name_the_argument(a, b, kw, match):
    with pytest.raises(ValueError, match=match):
        effect(a, b, **kw)


def test_bad_family_and_verdict_inputs():
    a = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"^conditions: expected a non-empty mapping"):
        compare_to_base(a, {})
    with pytest.raises(ValueError, match=r"^conditions\['x'\]: b: expected the shape of a"):
        compare_to_base(a, {"x": np.zeros((4, 2))})
    with pytest.raises(ValueError, match=r"^m: expected an integer >= 1, got 0"):
        bonferroni_level(0.95, 0)
    with pytest.raises(ValueError, match=r"^direction: expected 'increase' or 'decrease', got 'up'"):
        verdict(paired_difference(a, a + 1), direction="up")  # type: ignore[arg-type]

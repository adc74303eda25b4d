"""The loop benchmark's repeated runs: each run its own model, and the figures summed up per stream."""

from __future__ import annotations

from typing import Any

import pytest

from bench.loop import parse, repeats, repeats_table, run_name


def run(stream: str, tail: float | None, alarms: int, *, target: float = 0.98) -> dict[str, Any]:
    ratio_met = tail is not None and tail >= target
    return {
        "stream": stream,
        "changes": [10_000],
        "tail_vs_oracle": tail,
        "alarms": {"total": alarms + 1, "before_change": 1},
        "jobs": {"retrain_s_mean": 2.0},
        "targets": {
            "tail ≥ 98 % of the oracle": {"value": tail, "pass": ratio_met},
            "0 promotions of a worse model": {"value": 0, "pass": True},
        },
    }


def test_every_run_after_the_first_gets_a_model_of_its_own() -> None:
    assert [run_name("gradual", k) for k in range(3)] == ["gradual", "gradual_r2", "gradual_r3"]


def test_repeats_give_each_targets_mean_min_max_and_how_often_it_was_met() -> None:
    results = [
        run("gradual", 0.97, 1), run("regression", 1.01, 2),
        run("gradual", 0.99, 1), run("regression", 0.95, 1),
        run("gradual", 0.98, 3), {"stream": "regression", "run": 3, "error": "RuntimeError: boom"},
    ]  # fmt: skip
    summary = repeats(results)
    tail = summary["gradual"]["tail ≥ 98 % of the oracle"]
    assert tail["values"] == [0.97, 0.99, 0.98]
    assert tail["mean"] == pytest.approx(0.98)
    assert (tail["min"], tail["max"], tail["met"], tail["runs"], tail["failed"]) == (0.97, 0.99, 2, 3, 0)
    assert summary["gradual"]["alarms after the first change"]["values"] == [1, 1, 3]
    regression = summary["regression"]["tail ≥ 98 % of the oracle"]
    assert (regression["values"], regression["met"], regression["runs"], regression["failed"]) == (
        [1.01, 0.95],
        1,
        3,
        1,
    )
    table = repeats_table(summary)
    assert "| gradual | tail ≥ 98 % of the oracle | 3 | 0.97, 0.99, 0.98 | 0.980 | 0.970 | 0.990 | 2/3 |" in table
    assert "| regression | tail ≥ 98 % of the oracle | 3 (1 failed) |" in table


def test_a_run_without_a_figure_counts_as_not_met() -> None:
    summary = repeats([run("gradual", None, 0), run("gradual", 0.99, 0)])
    tail = summary["gradual"]["tail ≥ 98 % of the oracle"]
    assert (tail["mean"], tail["min"], tail["met"]) == (0.99, 0.99, 1)


def test_repeat_is_parsed_and_must_be_positive() -> None:
    options, _ = parse(["--streams", "gradual,regression", "--repeat", "3", "--vary-seed"])
    assert (options.streams, options.repeat, options.vary_seed) == (["gradual", "regression"], 3, True)
    with pytest.raises(SystemExit):
        parse(["--repeat", "0"])

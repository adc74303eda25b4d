"""The trainer's search: bounded by a wall-time budget and by trees, started from the champion, seeded."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom
from sklearn.base import BaseEstimator
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_info, threadpool_limits

from cli.churn_stream import ChurnStream
from libs.common.frames import features_frame
from libs.common.schema import DatasetSchema
from services.trainer.domain.training import (
    DEFAULT_PARAMS,
    ITERATION_CHUNK,
    SingleThreaded,
    TrainingConfig,
    _search,
    affordable,
    best_earlier,
    build_pipeline,
    candidates,
    champion_params,
    change_point,
    halving_rounds,
    iteration_cap,
    paired_comparison,
    recency_weights,
    recent_windows,
    scores,
    train,
)
from tests.factories import CHURN


def churn(rows: int, seed: int = 3) -> pd.DataFrame:
    return pd.DataFrame(ChurnStream(seed=seed).batch(rows))


def many_classes(rows: int, classes: int = 10, seed: int = 0) -> tuple[DatasetSchema, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 2, (classes, 24))
    y = rng.integers(0, classes, rows)
    bits = prototypes[y] ^ (rng.random((rows, 24)) < 0.1)
    frame = pd.DataFrame(bits.astype(float), columns=[f"b{i}" for i in range(24)]).assign(y=[f"k{k}" for k in y])
    schema = DatasetSchema.model_validate({
        "features": [{"name": f"b{i}", "dtype": "boolean"} for i in range(24)],
        "target": {"name": "y", "dtype": "categorical"},
        "task": "classification",
    })  # fmt: skip
    return schema, frame


def test_a_spent_budget_cuts_the_first_fit_short_and_still_gives_a_valid_model() -> None:
    result = train(CHURN, churn(800), TrainingConfig(n_iter=9, time_budget_s=0, n_jobs=1))
    assert result.search.startswith("1 candidates")
    assert {k: v for k, v in result.params.items() if k in DEFAULT_PARAMS} == DEFAULT_PARAMS
    assert result.params["iterations"] == ITERATION_CHUNK  # one look at the clock, then it stopped
    assert result.metrics["accuracy"] > 0.7
    assert set(result.pipeline.predict(result.holdout_frame)) <= {"no", "yes"}
    assert result.pipeline.named_steps["model"].get_params()["warm_start"] is False


def test_a_first_fit_budget_lets_the_one_fit_finish_while_the_search_budget_stays_spent() -> None:
    # A drift job's budget (here 0 s) skips the search; its fit runs to early stopping under the
    # first-fit budget, as a routine job's would, instead of stopping after one look at the clock.
    config = TrainingConfig(n_iter=9, time_budget_s=0, first_fit_budget_s=600, n_jobs=1)
    result = train(CHURN, churn(800), config)
    assert result.search.startswith("1 candidates (no search)")
    assert result.params["iterations"] > ITERATION_CHUNK
    whole = train(CHURN, churn(800), TrainingConfig(n_iter=1, time_budget_s=600, n_jobs=1))
    assert result.params["iterations"] == whole.params["iterations"]  # the same fit, uncut


def test_a_generous_budget_searches_by_successive_halving() -> None:
    result = train(CHURN, churn(800), TrainingConfig(n_iter=3, time_budget_s=600, n_jobs=1))
    assert result.search.startswith("3 candidates")
    assert result.metrics["accuracy"] > 0.7


def test_the_same_data_and_seed_give_the_same_model() -> None:
    config = TrainingConfig(n_iter=3, time_budget_s=600, n_jobs=1, seed=11)
    first, second = train(CHURN, churn(700), config), train(CHURN, churn(700), config)
    assert first.params == second.params
    assert first.metrics == second.metrics


def test_the_search_starts_from_the_champions_hyperparameters() -> None:
    champion = train(CHURN, churn(700, seed=1), TrainingConfig(n_iter=3, time_budget_s=600, n_jobs=1, seed=5))
    start = champion_params(champion.pipeline)
    assert start is not None
    assert start == {k: champion.params[k] for k in DEFAULT_PARAMS}
    assert candidates(TrainingConfig(n_iter=4), start)[0] == start
    challenger = train(CHURN, churn(700), TrainingConfig(n_iter=1, n_jobs=1), champion=champion.pipeline)
    assert {k: challenger.params[k] for k in start} == start
    assert challenger.champion_metrics is not None


def test_candidates_are_distinct_seeded_draws_after_the_first() -> None:
    drawn = candidates(TrainingConfig(n_iter=9, seed=1), None)
    assert drawn[0] == DEFAULT_PARAMS
    assert len(drawn) == 9
    assert all(drawn.count(c) == 1 for c in drawn)
    assert drawn == candidates(TrainingConfig(n_iter=9, seed=1), None)


def test_many_classes_cap_the_iterations_so_the_trees_stay_bounded() -> None:
    config = TrainingConfig(max_iter=300, max_trees=1500)
    assert iteration_cap(config, 2) == 300
    assert iteration_cap(config, 10) == 150
    assert iteration_cap(config, 1000) == 10
    schema, frame = many_classes(900)
    result = train(schema, frame, TrainingConfig(n_iter=1, time_budget_s=600, n_jobs=1, max_trees=200))
    model = result.pipeline.named_steps["model"]
    assert model.n_iter_ * model.n_trees_per_iteration_ <= 200
    assert result.metrics["accuracy"] > 0.5


def test_the_budget_shrinks_the_halving_to_what_it_affords() -> None:
    assert halving_rounds(9) == [9, 3]
    assert halving_rounds(3) == [3]
    assert halving_rounds(10) == [10, 4, 2]
    assert affordable(9, fit_s=0.1, remaining_s=100, cv_folds=3, n_jobs=1) == 9
    # 9 candidates: (9+3) fits × 3 folds + 1 refit = 37 fits; 3 candidates: 3 × 3 + 1 = 10 fits.
    assert affordable(9, fit_s=1.0, remaining_s=37, cv_folds=3, n_jobs=1) == 9
    assert affordable(9, fit_s=1.0, remaining_s=36.9, cv_folds=3, n_jobs=1) == 3
    assert affordable(9, fit_s=1.0, remaining_s=9.9, cv_folds=3, n_jobs=1) == 1
    assert affordable(9, fit_s=1.0, remaining_s=5.5, cv_folds=3, n_jobs=2) == 3


def test_the_search_reads_the_clock_before_each_candidate_and_keeps_the_best_it_scored() -> None:
    frame = churn(600)
    x, y = features_frame(CHURN, frame), frame[CHURN.target.name]
    config = TrainingConfig(n_iter=4, n_jobs=1)
    tried = candidates(config, None)
    base = build_pipeline(CHURN, config.seed, max_iter=30)
    best, how = _search(CHURN, config, base, tried, (x, y, None), time.monotonic() - 1, 0.0)
    assert (best, how) == (0, "cut at the budget in halving round 1/2 after 0/4")  # the first candidate stands
    best, how = _search(CHURN, config, base, tried, (x, y, None), time.monotonic() + 600, 0.0)
    assert how == "2 halving rounds"
    assert (best, how) == _search(CHURN, config, base, tried, (x, y, None), time.monotonic() + 600, 0.0)  # seeded
    # A candidate whose estimated cost overruns the deadline is not started.
    assert _search(CHURN, config, base, tried, (x, y, None), time.monotonic() + 60, 120.0)[0] == 0


def test_change_point_finds_where_the_errors_rose_and_is_quiet_without_one() -> None:
    rng = np.random.default_rng(4)
    steady = (rng.random(2000) < 0.1).astype(float)
    change = change_point(steady)
    assert change is not None
    assert change.p_value > 0.01
    shifted = np.concatenate([rng.random(400) < 0.05, rng.random(900) < 0.5]).astype(float)
    change = change_point(shifted)
    assert change is not None
    assert change.p_value < 1e-6
    assert abs(change.index - 400) < 60
    assert change.before < 0.1 < 0.4 < change.after
    # Heavy-tailed squared errors: ranks keep one huge error from looking like a change.
    squared = rng.normal(0, 1, 1500) ** 2
    squared[700] = 1e6
    change = change_point(squared)
    assert change is not None
    assert change.p_value > 0.01


def two_concepts(before: int, after: int, seed: int = 2) -> pd.DataFrame:
    """x0 + x1 ≤ 10, then x0 > x1: the same features, half the labels flipped."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 10, (before + after, 2))
    y = np.where(np.arange(before + after) < before, x[:, 0] + x[:, 1] <= 10, x[:, 0] > x[:, 1])
    return pd.DataFrame(x, columns=["a", "b"]).assign(label=np.where(y, "yes", "no"))


TWO = DatasetSchema.model_validate({
    "features": [{"name": "a", "dtype": "numeric"}, {"name": "b", "dtype": "numeric"}],
    "target": {"name": "label", "dtype": "categorical", "categories": ["no", "yes"]},
    "task": "classification",
})  # fmt: skip


def test_a_drift_job_leaves_out_the_rows_before_the_champions_errors_rose() -> None:
    config = TrainingConfig(n_iter=1, time_budget_s=0, n_jobs=1)
    champion = train(TWO, two_concepts(1500, 0, seed=1), config).pipeline
    frame = two_concepts(500, 1200)  # a drift window that began 500 rows before the change
    trimmed = train(TWO, frame, replace(config, trim_to_change=True), champion)
    assert 440 <= trimmed.dropped_rows <= 560
    assert "rows before the change left out" in trimmed.search
    assert trimmed.training_rows + trimmed.holdout_rows == len(frame) - trimmed.dropped_rows
    untrimmed = train(TWO, frame, config, champion)
    assert untrimmed.dropped_rows == 0
    fresh = two_concepts(0, 4000, seed=7)
    x, y = features_frame(TWO, fresh), fresh["label"]
    assert (trimmed.pipeline.predict(x) == y).mean() > (untrimmed.pipeline.predict(x) == y).mean() + 0.01


def test_nothing_is_left_out_when_the_champion_errs_alike_throughout() -> None:
    config = TrainingConfig(n_iter=1, time_budget_s=0, n_jobs=1, trim_to_change=True)
    champion = train(TWO, two_concepts(0, 1500, seed=1), replace(config, trim_to_change=False)).pipeline
    assert train(TWO, two_concepts(0, 1700), config, champion).dropped_rows == 0
    # A change too close to the end leaves too few rows to train on: nothing is left out.
    assert train(TWO, two_concepts(0, 1700)[::-1].reset_index(drop=True), config, None).dropped_rows == 0
    late = two_concepts(1600, 150)
    old = train(TWO, two_concepts(1500, 0, seed=1), replace(config, trim_to_change=False)).pipeline
    assert train(TWO, late, config, old).dropped_rows == 0


class OpenMPProbe(BaseEstimator):  # type: ignore[misc]
    """Records how many OpenMP threads a fit in the calling thread would use."""

    seen: ClassVar[list[int]] = []

    def fit(self, x: Any, y: Any = None) -> OpenMPProbe:
        self.seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp")
        return self


def fit_in_a_thread(pipeline: Pipeline) -> list[int]:
    OpenMPProbe.seen = []
    worker = threading.Thread(target=pipeline.fit, args=(np.zeros((4, 1)), [0, 1, 0, 1]))
    worker.start()
    worker.join()
    return OpenMPProbe.seen


def test_the_search_fits_with_one_openmp_thread_in_its_worker_threads() -> None:
    """threadpool_limits binds only the thread that calls it: the search's threads must limit themselves."""
    assert fit_in_a_thread(SingleThreaded([("probe", OpenMPProbe())])) == [1]
    if (os.cpu_count() or 1) > 1 and "OMP_NUM_THREADS" not in os.environ:
        with threadpool_limits(1, user_api="openmp"):  # what train() does around the search, in its own thread
            assert fit_in_a_thread(Pipeline([("probe", OpenMPProbe())])) == [os.cpu_count()]


def test_the_holdout_figures_are_scikit_learns() -> None:
    rng = np.random.default_rng(9)
    truth = pd.Series(rng.choice(["a", "b", "c"], 300))
    guess = np.where(rng.random(300) < 0.7, truth, rng.choice(["a", "b", "d"], 300))
    got = scores(CHURN, guess, truth)
    assert got["accuracy"] == pytest.approx(accuracy_score(truth, guess))
    assert got["f1_macro"] == pytest.approx(f1_score(truth, guess, average="macro", zero_division=0))
    regression = DatasetSchema.model_validate(
        {
            "features": [{"name": "x", "dtype": "numeric"}],
            "target": {"name": "y", "dtype": "numeric"},
            "task": "regression",
        }
    )
    actual, estimate = pd.Series(rng.normal(0, 3, 200)), rng.normal(0, 3, 200)
    got = scores(regression, estimate, actual)
    assert got["r2"] == pytest.approx(r2_score(actual, estimate))
    assert got["rmse"] == pytest.approx(np.sqrt(mean_squared_error(actual, estimate)))
    assert got["mae"] == pytest.approx(mean_absolute_error(actual, estimate))


def test_recent_rows_weigh_more_after_a_drift_so_a_moving_concept_is_learnt_as_it_is_now() -> None:
    weights = recency_weights(5, 0.2)
    assert weights is not None
    assert weights[-1] == 1.0
    assert weights[-2] == pytest.approx(0.5)  # one row back is a fifth of the rows: half the weight
    assert recency_weights(5, 0.0) is None
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (1000, 2))
    newer = np.arange(1000) >= 500  # the newer half follows the opposite rule
    label = np.where(newer, x[:, 0] < 0.5, x[:, 0] >= 0.5)
    frame = pd.DataFrame(x, columns=["a", "b"]).assign(y=np.where(label, "yes", "no"))
    schema = DatasetSchema.model_validate({
        "features": [{"name": "a", "dtype": "numeric"}, {"name": "b", "dtype": "numeric"}],
        "target": {"name": "y", "dtype": "categorical"},
        "task": "classification",
    })  # fmt: skip
    config = TrainingConfig(n_iter=1, time_budget_s=600, n_jobs=1)
    alike = train(schema, frame, config)
    recent = train(schema, frame, replace(config, recency_half_life=0.05))
    assert alike.metrics["accuracy"] < 0.3  # the holdout is the newest rows: the average concept is wrong there
    assert recent.metrics["accuracy"] > 0.9


REGRESSION = DatasetSchema.model_validate({
    "features": [{"name": "x", "dtype": "numeric"}], "target": {"name": "y", "dtype": "numeric"}, "task": "regression",
})  # fmt: skip


def test_mcnemar_counts_only_the_rows_where_the_two_models_disagree() -> None:
    truth = pd.Series(["yes"] * 1000)
    champion = np.array(["yes"] * 900 + ["no"] * 100)  # wrong on the last 100 rows
    challenger = champion.copy()
    challenger[900:960] = "yes"  # right on 60 of them ...
    challenger[:20] = "no"  # ... wrong on 20 the champion gets right: 80 discordant rows, 60 the challenger's
    got = paired_comparison(TWO, challenger, champion, truth)
    assert got["test"] == "mcnemar"
    assert got["rows"] == 1000
    assert got["loss_difference"] == pytest.approx(0.04)
    assert got["p_value"] == pytest.approx(float(binom.sf(59, 80, 0.5)))
    assert got["p_value"] < 1e-5
    assert paired_comparison(TWO, champion, challenger, truth)["p_value"] > 0.99  # the other way round
    assert paired_comparison(TWO, champion, champion, truth)["p_value"] == 1.0  # no row disagrees: no evidence
    # The best of four models on this holdout: its p-value counts the four (Bonferroni).
    four = paired_comparison(TWO, challenger, champion, truth, chosen_among=4)
    assert four["p_value"] == pytest.approx(min(1.0, 4 * got["p_value"]))
    assert four["chosen_among"] == 4


def test_the_paired_t_test_on_squared_errors_tells_a_small_real_gain_from_noise() -> None:
    rng = np.random.default_rng(4)
    truth = pd.Series(rng.normal(0, 5, 2000))
    champion = truth + rng.normal(0, 1.25, 2000)
    better = truth + rng.normal(0, 1.19, 2000)  # 5 % lower RMSE: real
    got = paired_comparison(REGRESSION, better.to_numpy(), champion.to_numpy(), truth)
    assert got["test"] == "paired_t"
    assert got["loss_difference"] > 0
    assert got["p_value"] < 0.05
    noise = champion + rng.normal(0, 0.01, 2000)  # the same model, jittered: nothing to show
    assert paired_comparison(REGRESSION, noise.to_numpy(), champion.to_numpy(), truth)["p_value"] > 0.01
    few = paired_comparison(REGRESSION, better.to_numpy()[:30], champion.to_numpy()[:30], truth[:30])
    assert few["p_value"] > got["p_value"]  # the same gain on 30 rows is far weaker evidence


def test_a_job_compares_its_model_with_the_champion_row_by_row() -> None:
    config = TrainingConfig(n_iter=1, time_budget_s=0, n_jobs=1)
    champion = train(TWO, two_concepts(1500, 0, seed=1), config).pipeline
    result = train(TWO, two_concepts(0, 1500), config, champion)
    assert result.comparison is not None
    assert result.comparison["rows"] == result.holdout_rows
    assert result.comparison["p_value"] < 1e-6  # the champion is wrong on half the new concept
    assert train(TWO, two_concepts(0, 1500), config).comparison is None


def test_the_newest_rows_windows_are_shares_of_the_training_rows_large_enough_to_judge() -> None:
    assert recent_windows(4000, [0.5, 0.25], 1000) == [2000, 1000]
    assert recent_windows(3000, [0.25, 0.5], 1000) == [1500]  # a quarter is too few rows to try
    assert recent_windows(4000, [0.5, 0.5, 1.0, 0.0], 100) == [2000]  # all rows are always tried anyway
    assert recent_windows(4000, [], 100) == []


def test_after_a_change_the_newest_window_is_kept_when_it_predicts_the_holdout_best() -> None:
    frame = two_concepts(2500, 1500)  # the holdout (newest 800 rows) and the newest 700 training rows follow B
    config = TrainingConfig(n_iter=1, time_budget_s=600, n_jobs=1, recent_min_rows=500)
    everything = train(TWO, frame, config)
    windowed = train(TWO, frame, replace(config, recent_shares=(0.5, 0.25)))
    assert everything.window_rows is None
    assert everything.metrics["accuracy"] < 0.7  # 2,500 rows of A outweigh 700 of B
    assert windowed.window_rows == 800  # a quarter of the 3,200 training rows: 100 of A, 700 of B
    assert windowed.training_rows == 800
    assert len(windowed.train_frame) == len(windowed.train_predictions) == 800
    assert windowed.metrics["accuracy"] > 0.9
    assert "the newest 800 of 3200 training rows kept" in windowed.search
    x, y = features_frame(TWO, frame.tail(800)), frame["label"].tail(800)
    assert (windowed.pipeline.predict(x) == y).mean() == pytest.approx(windowed.metrics["accuracy"])


def test_a_newer_window_replaces_all_rows_only_when_strictly_better_and_only_within_the_budget() -> None:
    frame = two_concepts(0, 4000, seed=3)  # one concept throughout
    config = TrainingConfig(n_iter=1, time_budget_s=600, n_jobs=1, recent_min_rows=500)
    everything = train(TWO, frame, config)
    windowed = train(TWO, frame, replace(config, recent_shares=(0.5, 0.25)))
    assert windowed.metrics["accuracy"] >= everything.metrics["accuracy"]
    if windowed.window_rows is None:
        assert windowed.metrics == everything.metrics
    spent = replace(config, time_budget_s=0, recent_shares=(0.5, 0.25))  # no time left after the one fit
    assert train(TWO, two_concepts(2500, 1500), spent).window_rows is None


def test_an_earlier_champion_that_beats_the_new_model_on_the_holdout_is_reused() -> None:
    config = TrainingConfig(n_iter=1, time_budget_s=0, n_jobs=1)
    learnt_a = train(TWO, two_concepts(3000, 0, seed=1), config).pipeline  # v1: concept A on many rows
    learnt_b = train(TWO, two_concepts(0, 3000, seed=4), config).pipeline  # v2: concept B, the champion
    back_to_a = two_concepts(600, 0, seed=5)  # A returns: a drift job has a few hundred rows of it
    result = train(TWO, back_to_a, config, learnt_b, [(1, learnt_a)])
    assert result.reused_version == 1
    assert result.pipeline is learnt_a
    assert result.params["reused_version"] == 1
    assert "earlier champion v1 reused" in result.search
    assert result.metrics["accuracy"] > result.champion_metrics["accuracy"] + 0.3  # type: ignore[index]
    assert len(result.train_predictions) == result.training_rows
    # A concept no earlier champion knows: the new model stays.
    fresh = train(TWO, two_concepts(0, 600, seed=6), config, learnt_a, [(1, learnt_a)])
    assert fresh.reused_version is None
    assert "reused_version" not in fresh.params


def test_only_a_strictly_better_earlier_champion_is_chosen_the_best_of_them() -> None:
    new = {"accuracy": 0.90}
    assert best_earlier("accuracy", new, []) is None
    assert best_earlier("accuracy", new, [(1, {"accuracy": 0.90})]) is None  # a tie keeps the new model
    picked = best_earlier("accuracy", new, [(1, {"accuracy": 0.95}), (3, {"accuracy": 0.97}), (2, {"accuracy": 0.8})])
    assert picked == (3, {"accuracy": 0.97})
    assert best_earlier("r2", {"r2": 0.5}, [(4, {"r2": 0.7}), (5, {"r2": 0.7})]) == (5, {"r2": 0.7})

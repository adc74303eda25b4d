"""What a judged window looked like, next to its reference: the data a drift report draws.

A window's verdict keeps only statistics. A person reading the report wants to
see the two distributions, so each judged window also stores, per feature and
for the prediction, its counts over the reference's own bins: the reference
quantile bins of a numeric feature (the same bins PSI is computed on), and the
reference categories plus ``__unseen__`` of a categorical one. That is a few
dozen numbers per feature, whatever the window's size.
"""

from __future__ import annotations

from typing import Any

from libs.common.profile import UNSEEN, CategoricalProfile, NumericProfile, ReferenceProfile
from services.monitor.domain.windows import CategoricalWindow, FeatureWindow, NumericWindow, Window


def window_histograms(window: Window) -> dict[str, dict[str, Any]]:
    """Feature (and ``prediction``) → reference and live counts over the reference's bins."""
    found = {name: feature_histogram(w) for name, w in window.features.items()}
    found["prediction"] = feature_histogram(window.prediction)
    return found


def reference_histograms(profile: ReferenceProfile) -> dict[str, dict[str, Any]]:
    """The same shape with no live counts: what a report shows before any window is judged."""
    found = {name: _empty(p) for name, p in profile.features.items()}
    found["prediction"] = _empty(profile.prediction)
    return found


def feature_histogram(window: FeatureWindow) -> dict[str, Any]:
    if isinstance(window, NumericWindow):
        ref = window.reference
        return {**_numeric(ref), "live": window.counts.tolist(), "missing": window.missing,
                "out_of_range": window.out_of_range}  # fmt: skip
    assert isinstance(window, CategoricalWindow)
    reference, live = window.aligned()
    return {"kind": "categorical", "categories": [*window.reference.counts, UNSEEN],
            "reference": reference.astype(int).tolist(), "live": live.astype(int).tolist(),
            "missing": window.missing}  # fmt: skip


def _numeric(ref: NumericProfile) -> dict[str, Any]:
    return {"kind": "numeric", "edges": list(ref.edges), "min": ref.min, "max": ref.max,
            "reference": list(ref.counts)}  # fmt: skip


def _empty(profile: NumericProfile | CategoricalProfile) -> dict[str, Any]:
    if isinstance(profile, NumericProfile):
        return {**_numeric(profile), "live": [0] * len(profile.counts), "missing": 0, "out_of_range": 0}
    names = [*profile.counts, UNSEEN]
    return {"kind": "categorical", "categories": names, "reference": [profile.counts.get(n, 0) for n in names],
            "live": [0] * len(names), "missing": 0}  # fmt: skip

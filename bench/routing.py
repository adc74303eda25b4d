"""What a traffic split adds to a predict request: the routing decision of
``services/serving/domain/routing.py``, timed alone (it is all serving does per
request for a split; the shadow's copy is scheduled as a task after that).

    .venv/bin/python -m bench.routing        # prints nanoseconds per decision
"""

from __future__ import annotations

import json
import timeit

from services.serving.domain.routing import Splits


def per_call_ns(statement: str, namespace: dict[str, object], number: int = 200_000) -> float:
    best = min(timeit.repeat(statement, globals=namespace, number=number, repeat=5))
    return best / number * 1e9


def main() -> None:
    plain: Splits[str] = Splits(seed=1)
    split: Splits[str] = Splits(seed=1)
    split.set_canary("churn", "v2", 20.0)
    split.set_shadow("churn", "v3")
    keys = [f"customer-{i}" for i in range(1000)]
    ns = {"plain": plain, "split": split, "keys": keys}
    figures = {
        "no split (champion only)": per_call_ns('plain.pick("churn", "v1", None)', ns),
        "canary 20 %, random": per_call_ns('split.pick("churn", "v1", None)', ns),
        "canary 20 %, routing key": per_call_ns('split.pick("churn", "v1", keys[7])', ns),
    }
    for name, value in figures.items():
        print(f"{name:28s} {value:8.0f} ns per request")
    print(json.dumps({k: round(v) for k, v in figures.items()}))


if __name__ == "__main__":
    main()

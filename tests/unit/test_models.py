"""Safe loading: every pipeline the trainer builds loads; crafted skops files
that would run code are refused before anything in them is built."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io as sio

from libs.common import models
from libs.common.errors import ArtifactError
from libs.common.frames import features_frame
from libs.common.schema import DatasetSchema
from services.trainer.domain.training import build_pipeline

FEATURE_SETS = {
    "numeric-only": ["numeric", "integer", "boolean"],
    "categorical-only": ["categorical", "categorical"],
    "mixed": ["numeric", "categorical", "integer", "boolean"],
}
TARGETS = {
    "binary": ("classification", "categorical", ["yes", "no"]),
    "multiclass": ("classification", "categorical", ["a", "b", "c"]),
    "integer-classes": ("classification", "integer", [0, 1, 2]),
    "boolean-classes": ("classification", "boolean", [True, False]),
    "regression": ("regression", "numeric", None),
}


def _shape(features: list[str], target: str) -> tuple[DatasetSchema, pd.DataFrame]:
    task, dtype, classes = TARGETS[target]
    rng = np.random.default_rng(3)
    n = 200
    schema = DatasetSchema.model_validate({
        "features": [{"name": f"f{i}", "dtype": k, "nullable": True} for i, k in enumerate(features)],
        "target": {"name": "y", "dtype": dtype},
        "task": task,
    })  # fmt: skip
    columns: dict[str, Any] = {}
    for f in schema.features:
        if f.dtype == "categorical":
            columns[f.name] = rng.choice(np.array(["red", "green", "blue", None], dtype=object), n)
        elif f.dtype == "boolean":
            columns[f.name] = rng.choice([True, False], n)
        elif f.dtype == "integer":
            columns[f.name] = rng.integers(0, 50, n)
        else:
            columns[f.name] = np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n))
    if classes is None:
        columns["y"] = rng.normal(size=n)
    else:  # strings as pandas holds them (object), integers and booleans as their own dtypes
        columns["y"] = rng.choice(np.array(classes, dtype=object if dtype == "categorical" else None), n)
    return schema, pd.DataFrame(columns)


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("features", sorted(FEATURE_SETS))
def test_every_trainer_pipeline_loads(features: str, target: str) -> None:
    """If this fails after a pipeline change, add the named types to models.ALLOWED_TYPES
    (or the loader to ALLOWED_LOADERS) — after checking none of them calls a named function."""
    schema, frame = _shape(FEATURE_SETS[features], target)
    pipeline = build_pipeline(schema, seed=1).set_params(model__max_iter=5)
    x = features_frame(schema, frame)
    y = frame["y"].astype(float) if schema.task == "regression" else frame["y"]
    pipeline.fit(x, y)
    data = models.dumps(pipeline)
    assert models.refused_types(data) == [], "add these to libs/common/models.py allowlists"
    loaded = models.loads(data)
    assert (loaded.predict(x) == pipeline.predict(x)).all()


# --- crafted attack artifacts -------------------------------------------------------------------------------


def _str(value: str) -> dict[str, Any]:
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(value), "is_json": True}  # fmt: skip


def _tuple(*items: dict[str, Any]) -> dict[str, Any]:
    return {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode", "content": list(items)}


def _list(*items: dict[str, Any]) -> dict[str, Any]:
    return {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "content": list(items)}


def _call(module: str, name: str, *args: dict[str, Any]) -> dict[str, Any]:
    """A node skops builds by calling ``module.name(*args)``."""
    return {
        "__class__": name,
        "__module__": module,
        "__loader__": "ConstructorFromReduceNode",
        "content": _tuple(*args),
    }


def _artifact(tree: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("schema.json", json.dumps({**tree, "protocol": 2, "_skops_version": "0.16.0"}))
    return buffer.getvalue()


def _os() -> dict[str, Any]:
    return _call("builtins", "__import__", _str("os"))


ATTACKS = {
    "exec": lambda marker: _call("builtins", "exec", _str(f"open({str(marker)!r}, 'w').close()")),
    "eval": lambda marker: _call("builtins", "eval", _str(f"open({str(marker)!r}, 'w').close()")),
    "import-getattr-map-list": lambda marker: _call(
        "builtins",
        "list",
        _call("builtins", "map", _call("builtins", "getattr", _os(), _str("system")), _list(_str(f"touch {marker}"))),
    ),
    "methodcaller": lambda marker: _call(
        "builtins",
        "list",
        _call(
            "builtins",
            "map",
            {
                "__class__": "methodcaller",
                "__module__": "operator",
                "__loader__": "OperatorFuncNode",
                "attrs": _tuple(_str("system"), _str(f"touch {marker}")),
            },
            _list(_os()),
        ),
    ),
    "os.system-by-name": lambda marker: _call("os", "system", _str(f"touch {marker}")),
    "hidden-among-allowed-nodes": lambda marker: _list(
        _str("steps"), _tuple(_str("model"), _call("builtins", "exec", _str(f"open({str(marker)!r}, 'w').close()")))
    ),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_artifacts_are_refused_and_nothing_runs(attack: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = _artifact(ATTACKS[attack](marker))
    with pytest.raises(ArtifactError, match="outside the allowlist") as refused:
        models.loads(data)
    assert refused.value.details["refused"], "the error names the refused types"
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_the_attack_artifacts_are_live(attack: str, tmp_path: Path) -> None:
    """Proof the payloads above are real: skops trusting what they ask for runs them
    (what the old prefix allowlist did for every builtins.* and operator.* type)."""
    marker = tmp_path / "pwned"
    data = _artifact(ATTACKS[attack](marker))
    sio.loads(data, trusted=sio.get_untrusted_types(data=data))
    assert marker.exists()


def test_garbage_is_an_artifact_error() -> None:
    with pytest.raises(ArtifactError, match="not a skops file"):
        models.loads(b"not a zip file")
    with pytest.raises(ArtifactError, match="not a skops file"):
        models.loads(_artifact({"x": 1})[:-10])

"""Model artifacts: fitted scikit-learn pipelines serialised with skops.

skops never unpickles, but it does call what a file names: a node can ask for
any importable callable to be called with arguments taken from the file
(``builtins.exec("…")``, ``builtins.getattr(__import__("os"), "system")``,
``operator.methodcaller("system", …)``). Trusting whole module prefixes
(``builtins.``, ``operator.``) therefore trusts code execution.

So the loader reads the artifact's ``schema.json`` itself, before skops
builds anything, and refuses the artifact unless every node in it is of a type
named exactly in :data:`ALLOWED_TYPES` and is built by a loader named in
:data:`ALLOWED_LOADERS`. Both lists contain only what the trainer's pipelines
are made of (derived by fitting every pipeline shape the trainer builds;
``tests/unit/test_models.py`` fits them again and fails, naming the missing
type, when a pipeline change needs a new entry). Loaders that call something
(``ConstructorFromReduceNode``, ``OperatorFuncNode``, ``MethodNode``,
``PartialNode``, ``FunctionNode``) are not allowed at all. skops's own audit
then runs as a second check with only the allowlisted types trusted.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from libs.common.artifacts import ArtifactStore
from libs.common.errors import ArtifactError
from libs.common.events import ArtifactRef

#: Every type a trainer pipeline's skops file contains, by exact name.
#: Change it together with services/trainer/domain/training.py; the unit test
#: ``test_every_trainer_pipeline_loads`` says which entry is missing.
ALLOWED_TYPES: frozenset[str] = frozenset(
    {
        # containers and scalars
        "builtins.bool",
        "builtins.dict",
        "builtins.float",
        "builtins.int",
        "builtins.list",
        "builtins.NoneType",
        "builtins.slice",
        "builtins.str",
        "builtins.tuple",
        # NumPy arrays, dtypes and the random generator of the estimators
        "numpy.bool_",
        "numpy.dtype",
        "numpy.float64",
        "numpy.int64",
        "numpy.intp",
        "numpy.ndarray",
        "numpy.object_",
        "numpy.uint64",
        "numpy.random._generator.Generator",
        # the pipeline and its preprocessing
        "sklearn.pipeline.Pipeline",
        "sklearn.compose._column_transformer.ColumnTransformer",
        "sklearn.impute._base.SimpleImputer",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.preprocessing._encoders.OneHotEncoder",
        "sklearn.preprocessing._label.LabelEncoder",
        # histogram gradient boosting, its trees, losses and links
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
        "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn._loss.loss.HalfBinomialLoss",
        "sklearn._loss.loss.HalfMultinomialLoss",
        "sklearn._loss.loss.HalfSquaredError",
        "sklearn._loss._loss.CyHalfBinomialLoss",
        "sklearn._loss._loss.CyHalfMultinomialLoss",
        "sklearn._loss._loss.CyHalfSquaredError",
        "sklearn._loss.link.IdentityLink",
        "sklearn._loss.link.Interval",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.link.MultinomialLogit",
    }
)

#: skops node loaders a pipeline needs: none of them calls a named function.
ALLOWED_LOADERS: frozenset[str] = frozenset(
    {
        "DictNode",
        "DTypeNode",
        "JsonNode",
        "ListNode",
        "LossNode",
        "NdArrayNode",
        "ObjectNode",
        "RandomGeneratorNode",
        "SliceNode",
        "TupleNode",
        "TypeNode",
    }
)


# skops is imported where it is used: it imports scikit-learn, SciPy and pandas (about 5 s of a
# process start on a busy machine), and serving runs most versions on onnxruntime without it.


def preload() -> None:
    """Import skops (and with it scikit-learn, SciPy, pandas) now, so that the first version loaded on
    scikit-learn does not pay for it. Serving calls it in the background once it started: a drift
    retrain serves on scikit-learn until its deferred ONNX export arrives, and that first load, importing
    all of this on a busy machine, took 11 s of the loop benchmark's recovery."""
    import skops.io  # noqa: F401


def dumps(model: Any) -> bytes:
    import skops.io as sio

    return bytes(sio.dumps(model))


def refused_types(data: bytes) -> list[str]:
    """The nodes of a skops file that are not on the allowlists, as ``loader:type`` (empty: loadable)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ArtifactError(f"model artifact is not a skops file: {exc}") from exc
    refused: set[str] = set()
    for loader, name in _nodes(schema):
        if loader not in ALLOWED_LOADERS or name not in ALLOWED_TYPES:
            refused.add(f"{loader}:{name}")
    return sorted(refused)


def _nodes(tree: Any) -> list[tuple[str, str]]:
    """Every (loader, module.class) in a skops schema tree, however deeply nested."""
    found: list[tuple[str, str]] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "__loader__" in node:
                found.append((str(node["__loader__"]), f"{node.get('__module__')}.{node.get('__class__')}"))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def loads(data: bytes) -> Any:
    """The model in ``data``, if every node it holds is on the allowlists; nothing is built otherwise."""
    refused = refused_types(data)
    if refused:
        raise ArtifactError(f"model artifact refused: it needs types outside the allowlist: {refused}", refused=refused)
    import skops.io as sio

    try:
        needed = sio.get_untrusted_types(data=data)
        return sio.loads(data, trusted=[t for t in needed if t in ALLOWED_TYPES])
    except (TypeError, ValueError, KeyError, AttributeError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"model artifact could not be loaded: {type(exc).__name__}: {exc}") from exc


def load(store: ArtifactStore, ref: ArtifactRef) -> Any:
    """Read (digest-verified) and load a model artifact."""
    return loads(store.get(ref))


def load_onnx(store: ArtifactStore, ref: ArtifactRef) -> bytes:
    """Read an ONNX export, digest-verified like every model artifact.

    onnxruntime parses the graph itself and runs only ONNX operators, so there
    is no type allowlist to apply; the bytes must still be exactly the ones the
    trainer stored, and every loader reads them through here.
    """
    return store.get(ref)

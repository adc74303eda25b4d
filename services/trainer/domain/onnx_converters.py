"""Two narrow additions to skl2onnx's converters, registered over the stock ones.

1. **HistGradientBoosting: booleans in an integer attribute.** skl2onnx 1.20's
   ``add_tree_to_attribute_pairs_hist_gradient_boosting``
   (``skl2onnx/common/tree_ensemble.py``) sets ``missing = False`` — a Python
   bool — for every leaf and appends it to ``nodes_missing_value_tracks_true``
   (split nodes append scikit-learn's ``np.uint8``). That attribute is a list
   of ints, and the protobuf runtime installed with onnx 1.23 (7.36) refuses a
   bool there: ``TypeError: Field onnx.AttributeProto.ints: Expected an int,
   got a boolean``, so every HistGradientBoosting model failed to convert (the
   issue saw it with scikit-learn 1.9; the bool is skl2onnx's own literal).
   The wrapper calls the stock converter with a container whose ``add_node``
   casts that one attribute to ints; nothing else changes. Remove it once
   skl2onnx writes ints there itself.

2. **The categorical missing marker.** Pipelines fill a missing category with
   ``MISSING_CATEGORY`` using ``SimpleImputer(strategy="constant")`` on NaN.
   skl2onnx converts a string imputer only when the missing value is itself a
   string. In the ONNX graph there is nothing to impute: a string tensor has
   no NaN, and by contract a missing category is fed as the marker already.
   So that one imputer becomes an Identity; any other imputer goes to the
   stock converter.
"""

from __future__ import annotations

import math
from typing import Any

from libs.common.frames import MISSING_CATEGORY

_BOOL_LISTS = ("nodes_missing_value_tracks_true",)
_TREE_ALIASES = ("SklearnHistGradientBoostingClassifier", "SklearnHistGradientBoostingRegressor")
_IMPUTER_ALIAS = "SklearnSimpleImputer"
_registered = False


def register() -> None:
    """Install both wrappers over skl2onnx's converters (once per process)."""
    global _registered
    if _registered:
        return
    from skl2onnx.common._registration import get_converter, register_converter

    for alias in _TREE_ALIASES:
        stock = get_converter(alias)
        register_converter(alias, _ints_not_bools(stock), overwrite=True, options=stock.get_allowed_options())
    stock = get_converter(_IMPUTER_ALIAS)
    register_converter(_IMPUTER_ALIAS, _marker_imputer(stock), overwrite=True, options=stock.get_allowed_options())
    _registered = True


def _ints_not_bools(stock: Any) -> Any:
    def convert(scope: Any, operator: Any, container: Any) -> Any:
        add_node = container.add_node

        def add_node_with_ints(*args: Any, **attrs: Any) -> Any:
            for name in _BOOL_LISTS:
                if name in attrs:
                    attrs[name] = [int(v) for v in attrs[name]]
            return add_node(*args, **attrs)

        container.add_node = add_node_with_ints  # this container, for this one operator only
        try:
            return stock(scope, operator, container)
        finally:
            del container.add_node

    return convert


def _marker_imputer(stock: Any) -> Any:
    def convert(scope: Any, operator: Any, container: Any) -> Any:
        from skl2onnx.common.data_types import StringTensorType
        from skl2onnx.operator_converters.common import concatenate_variables

        op = operator.raw_operator
        marker = (
            isinstance(operator.inputs[0].type, StringTensorType)
            and op.strategy == "constant"
            and op.fill_value == MISSING_CATEGORY
            and isinstance(op.missing_values, float)
            and math.isnan(op.missing_values)
        )
        if not marker:
            return stock(scope, operator, container)
        columns = concatenate_variables(scope, operator.inputs, container)
        container.add_node(
            "Identity", columns, operator.outputs[0].full_name, name=scope.get_unique_operator_name("Identity")
        )
        return None

    return convert

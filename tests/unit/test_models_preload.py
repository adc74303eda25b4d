"""Serving imports scikit-learn lazily, and preloads it in the background (libs/common/models.preload)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from libs.common import models
from services.serving import app
assert "sklearn" not in sys.modules, "serving imported scikit-learn at import time"
models.preload()
assert "sklearn" in sys.modules and "skops.io" in sys.modules
"""


def test_serving_does_not_import_scikit_learn_until_preload_does() -> None:
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]

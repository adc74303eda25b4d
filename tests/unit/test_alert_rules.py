"""Alert rules: promtool's own unit tests, and only metrics the services really export."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def exported_metrics() -> set[str]:
    """Metric names defined in the code (prometheus_client names, counters with _total)."""
    names: set[str] = set()
    for path in [*ROOT.glob("libs/**/*.py"), *ROOT.glob("services/**/*.py")]:
        names.update(re.findall(r'"(driftloop_[a-z0-9_]+)"', path.read_text()))
    return names


def base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix) and not name.endswith("_seconds_total"):
            return name.removesuffix(suffix)
    return name


def test_every_rule_names_an_exported_metric() -> None:
    exported = {base(n) for n in exported_metrics()}
    used = set(re.findall(r"\b(driftloop_[a-z0-9_]+)", (RULES / "rules.yml").read_text()))
    assert used, "no driftloop metric in the rules"
    missing = sorted(n for n in used if base(n) not in exported)
    assert missing == [], f"rules name metrics no service exports: {missing}"


def test_promtool_unit_tests_pass() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'); .ci/run installs it")
    result = subprocess.run([promtool, "test", "rules", "rules_test.yml"], cwd=RULES, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    checked = subprocess.run([promtool, "check", "rules", "rules.yml"], cwd=RULES, capture_output=True, text=True)
    assert "SUCCESS: 11 rules found" in checked.stdout

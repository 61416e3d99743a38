"""The import layers of pyproject.toml's [tool.importlinter] contracts hold: archs and tasks import
nothing above them, reports read result files only (through recipes.schema, a leaf that imports nothing
from the package and no torch), the engine knows no recipe, recipes know no other recipe, and nothing
below the orchestrator imports it."""

import subprocess
import sys

from tests.conftest import ROOT


def test_import_contracts_are_kept():
    out = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                          "lint_imports_command()"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout and "6 kept" in out.stdout

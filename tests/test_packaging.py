"""The wheel holds every subpackage and every front-end asset (editable installs hide omissions)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True, capture_output=True,
    )
    (whl,) = out.glob("medlab-*.whl")
    return set(zipfile.ZipFile(whl).namelist())


def expected_files():
    """Every .py of the core and widgets, and the widgets' JS/CSS, as paths inside the wheel."""
    files = []
    for src, dst in ((ROOT / "medlab", "medlab"), (ROOT / "widgets", "medlab/widgets")):
        for f in src.rglob("*"):
            if f.suffix in (".py", ".js", ".css", ".json") and "__pycache__" not in f.parts:
                files.append(f"{dst}/{f.relative_to(src).as_posix()}")
    return files


def test_wheel_contains_every_module_and_asset(wheel_names):
    missing = [f for f in expected_files() if f not in wheel_names]
    assert not missing, f"missing from the wheel (add the subpackage to pyproject's packages): {missing}"
    assert any(n.endswith(".js") for n in wheel_names if n.startswith("medlab/widgets/")), "viewer JS not packaged"


def test_no_tests_or_notebooks_in_wheel(wheel_names):
    assert not any(n.startswith(("tests/", "notebooks/", "benchmarks/")) for n in wheel_names)

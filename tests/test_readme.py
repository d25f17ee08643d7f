"""The README's tour runs as written on a fresh install (built-in data only)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run_in_order(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) >= 3, "the README tour lost its code"
    script = "\n".join(blocks)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, f"README code failed:\n{out.stderr[-3000:]}"
    assert "CT " in out.stdout and "gaussian_smooth(" in out.stdout  # describe() and to_python() printed
    assert (tmp_path / "recipe.json").exists()

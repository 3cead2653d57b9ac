"""cnm_runtime (and its CLI) must import in a process where importing torch fails."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import BLOCK_TORCH, REPO

IMPORT_EVERY_RUNTIME_MODULE = BLOCK_TORCH + textwrap.dedent(
    """
    import importlib, pkgutil
    import cnm_runtime
    for module in pkgutil.walk_packages(cnm_runtime.__path__, "cnm_runtime."):
        importlib.import_module(module.name)
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
    print("ok")
    """
)


def test_runtime_imports_without_torch():
    result = subprocess.run([sys.executable, "-c", IMPORT_EVERY_RUNTIME_MODULE], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"

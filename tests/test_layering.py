"""cnm_runtime (and its CLI) must import in a process where importing torch fails, and without cnm-features'
libraries; cnm-features' decoding processes must start without torch."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conftest import BLOCK_TORCH, REPO

IMPORT_EVERY_RUNTIME_MODULE = BLOCK_TORCH + textwrap.dedent(
    """
    import importlib, pkgutil
    import cnm_runtime
    for module in pkgutil.walk_packages(cnm_runtime.__path__, "cnm_runtime."):
        importlib.import_module(module.name)
    assert not any(m.split(".")[0] in ("torch", "av", "transformers", "PIL") for m in sys.modules)
    print("ok")
    """
)


def test_runtime_imports_without_torch():
    result = subprocess.run([sys.executable, "-c", IMPORT_EVERY_RUNTIME_MODULE], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# A decoding process of cnm-features imports the command's module (spawn runs the parent's main module again)
# and the decoding code: neither may pull torch in, or every worker would pay for it.
IMPORT_FEATURES_DECODING = BLOCK_TORCH + textwrap.dedent(
    """
    import cnm_train.extract.cli, cnm_train.extract.workers
    print("ok")
    """
)


def test_feature_decoding_imports_without_torch():
    pytest.importorskip("av")
    result = subprocess.run([sys.executable, "-c", IMPORT_FEATURES_DECODING], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"

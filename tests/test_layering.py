"""cnm_runtime (and its CLI) must import in a process where importing torch fails, and without cnm-features'
libraries; cnm-features' decoding processes must start without torch."""
from __future__ import annotations

import ast
import functools
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


def _runtime_imports() -> dict[str, set[str]]:
    """Each cnm_runtime module -> the cnm_runtime modules it imports, anywhere in it but under TYPE_CHECKING."""
    root = REPO / "cnm_runtime"
    names = {".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
             for path in root.rglob("*.py")}
    imports: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and ast.unparse(block.test) == "TYPE_CHECKING" for node in ast.walk(block)}
        found = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnm_runtime"):
                found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names} & names
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names} & names
        imports[module] = (found & names) - {module}
    return imports


def test_the_longest_chain_of_imports_in_the_runtime_is_at_most_eight_modules():
    imports = _runtime_imports()

    @functools.cache
    def longest(module: str) -> tuple[str, ...]:
        return max(((module, *longest(other)) for other in imports[module]), key=len, default=(module,))

    chain = max((longest(module) for module in imports), key=len)
    assert len(chain) <= 8, " -> ".join(chain)
    assert not any("scaleout" in module for module in longest("cnm_runtime.grounder"))  # beside, not under


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

"""Every module edgeport imports, directly or on a library path it uses, is installed by
the README's command: a missing dependency fails here, not in a user's conversion."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

from edgeport.dependencies import distribution_for, install_hint

PACKAGE = Path(__file__).resolve().parents[1] / "edgeport"
# Templates copied into bundles import only what the device has (the runtime, numpy,
# tokenizers); they are checked by the bundle tests, on a device-like environment.
DEVICE_SIDE = PACKAGE / "runners"
# Modules that a library on one of edgeport's paths imports lazily, inside a function,
# so that importing edgeport's own modules does not reach them.
LAZY_LIBRARY_IMPORTS = (
    "onnx_ir",  # onnxruntime.transformers.fusion_utils (bf16 tensors) and the int4 quantiser
    "onnxruntime.quantization.matmul_nbits_quantizer",
    "onnxruntime.transformers.optimizer",
    "optimum.exporters.onnx",
    "optimum.exporters.openvino",
    "optimum.intel",
    "nncf",
    "openvino_tokenizers",
)


def _imported_modules() -> set[str]:
    """Absolute module names imported anywhere in edgeport's host-side code."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(DEVICE_SIDE):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
    return {
        name
        for name in found
        if name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] != "edgeport"
    }


THIRD_PARTY = sorted(_imported_modules())


def test_the_scan_finds_the_optional_code_paths() -> None:
    assert {"onnxruntime.quantization.matmul_nbits_quantizer", "nncf", "torch"} <= set(THIRD_PARTY)


@pytest.mark.parametrize("module", sorted({*THIRD_PARTY, *LAZY_LIBRARY_IMPORTS}))
def test_module_imports_in_the_installed_environment(module: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        pytest.fail(f"{module}: {install_hint(exc.name or module)}")


def _declared() -> set[str]:
    names = set()
    for requirement in importlib.metadata.requires("edgeport") or []:
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert match, requirement
        names.add(re.sub(r"[-_.]+", "-", match.group(0)).lower())
    return names


@pytest.mark.parametrize("module", THIRD_PARTY)
def test_directly_imported_module_is_a_declared_dependency(module: str) -> None:
    """A module edgeport imports itself must come from a package edgeport declares: one
    that merely happens to be pulled in by another package can disappear in its next release."""
    top = module.split(".")[0]
    providers = importlib.metadata.packages_distributions().get(top, [])
    normalised = {re.sub(r"[-_.]+", "-", name).lower() for name in providers}
    assert normalised & _declared(), (
        f"edgeport imports {module!r} (from {sorted(normalised)}) but pyproject.toml does not "
        f"declare it; declared: {sorted(_declared())}"
    )


def test_environment_resolves_modules_inside_itself() -> None:
    """In a virtual environment (CI's, or the README's .venv), nothing leaks in from the
    machine's own site-packages."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("not running in a virtual environment")
    prefix = Path(sys.prefix).resolve()
    for name in ("torch", "onnxruntime", "onnx_ir", "transformers", "yaml"):
        origin = Path(importlib.import_module(name).__file__ or "").resolve()
        assert origin.is_relative_to(prefix), f"{name} comes from {origin}, outside {prefix}"


@pytest.mark.parametrize(
    ("module", "package"),
    [
        ("onnx_ir", "onnx-ir"),
        ("yaml", "pyyaml"),
        ("optimum.intel.openvino", "optimum-intel"),
        ("optimum.exporters.onnx", "optimum-onnx"),
        ("onnxruntime.quantization", "onnxruntime"),
    ],
)
def test_missing_module_names_the_package_to_install(module: str, package: str) -> None:
    assert distribution_for(module) == package
    assert f"pip install -c constraints.txt {package}`" in install_hint(module) or (
        '"edgeport[openvino]"' in install_hint(module)
    )


def test_missing_openvino_module_names_the_extra() -> None:
    assert 'pip install -c constraints.txt "edgeport[openvino]"' in install_hint("nncf")

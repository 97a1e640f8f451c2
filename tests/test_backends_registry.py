"""A target is data plus one module: `targets/<id>.yaml` names its backend class, and
get_backend/host_targets/host probing find it from there, with no registry in code."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeport import host
from edgeport.backends import backend_from_spec, get_backend, host_targets
from edgeport.catalog import load_file, load_targets
from edgeport.dependencies import install_hint
from edgeport.errors import CatalogError, UnsupportedError
from edgeport.schemas import Target

BUILTIN = load_targets()

FAKE_BACKEND = """
class FakeBackend:
    target_id = "fake"

    def export(self, model, workdir, *, trust_remote_code):
        raise NotImplementedError

    def build(self, exported, candidate, model, calibration, workdir):
        raise NotImplementedError

    def load(self, artifact, device, threads):
        raise NotImplementedError

    @staticmethod
    def host_devices():
        return ["FAKE", "CPU"]
"""

TARGET_YAML = """
id: fake
name: Fake runtime
formats: [fake]
host_modules: []
device_packages: [numpy]
devices: [CPU, FAKE]
precisions: [fp32]
families: [encoder]
runtime_overhead_mb: 10
backend: {backend}
schemes: [none]
runner: fake
"""


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for throwaway backend modules, unloaded after the test."""
    folder = tmp_path / "modules"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _module(folder: Path, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(source, encoding="utf-8")
    importlib.invalidate_caches()  # the import system caches folder listings


def _write_target(folder: Path, backend: str) -> Path:
    path = folder / "fake.yaml"
    path.write_text(TARGET_YAML.format(backend=backend), encoding="utf-8")
    return path


def test_get_backend_builds_the_class_a_target_yaml_names(modules: Path, tmp_path: Path) -> None:
    _module(modules, "ep_fake_backend", FAKE_BACKEND)
    target = load_file(_write_target(tmp_path, "ep_fake_backend:FakeBackend"), Target)
    backend = get_backend(target)
    assert type(backend).__name__ == "FakeBackend"
    assert backend.host_devices() == ["FAKE", "CPU"]


def test_a_child_process_builds_the_backend_from_the_spec_alone() -> None:
    # bench.py's measuring child is handed the target's `backend`, not the target.
    from edgeport.backends.onnxruntime import OnnxRuntimeBackend

    assert isinstance(backend_from_spec(BUILTIN["onnxruntime"].backend), OnnxRuntimeBackend)


def test_a_backend_module_or_class_that_does_not_exist_is_unsupported(modules: Path) -> None:
    _module(modules, "ep_fake_backend", FAKE_BACKEND)
    base = BUILTIN["onnxruntime"]
    for spec, problem in [
        ("ep_no_such_backend:FakeBackend", "no module 'ep_no_such_backend'"),
        ("ep_no_such_package.backend:FakeBackend", "no module"),
        ("ep_fake_backend:Missing", "has no class 'Missing'"),
    ]:
        with pytest.raises(UnsupportedError, match=problem) as caught:
            get_backend(base.model_copy(update={"backend": spec}))
        assert "\n" not in str(caught.value)


def test_a_missing_dependency_of_the_backend_stays_module_not_found(modules: Path) -> None:
    # evaluation.py turns ModuleNotFoundError into "needs `pip install ...`": the name of the
    # missing third-party module must survive get_backend.
    _module(modules, "ep_needs_dep", "import ep_absent_runtime\n")
    target = BUILTIN["onnxruntime"].model_copy(update={"backend": "ep_needs_dep:Backend"})
    with pytest.raises(ModuleNotFoundError) as caught:
        get_backend(target)
    assert caught.value.name == "ep_absent_runtime"
    assert "ep-absent-runtime" in install_hint(caught.value.name)


def test_a_backend_whose_runtime_fails_to_load_is_unsupported_in_one_line(modules: Path) -> None:
    _module(
        modules,
        "ep_broken_backend",
        'raise ImportError("libfake.so: cannot open\\nshared object")\n',
    )
    target = BUILTIN["onnxruntime"].model_copy(update={"backend": "ep_broken_backend:Backend"})
    with pytest.raises(UnsupportedError, match=r"cannot be imported: libfake\.so") as caught:
        get_backend(target)
    assert "\n" not in str(caught.value)


def test_host_targets_ignores_a_target_whose_backend_module_is_missing(modules: Path) -> None:
    _module(modules, "ep_fake_backend", FAKE_BACKEND)
    present = BUILTIN["onnxruntime"].model_copy(
        update={"id": "present", "backend": "ep_fake_backend:FakeBackend"}
    )
    absent = BUILTIN["onnxruntime"].model_copy(
        update={"id": "absent", "backend": "edgeport.backends.no_such_runtime:Backend"}
    )
    assert host_targets([present, absent]) == frozenset({"present"})
    assert "ep_fake_backend" not in sys.modules  # checked without importing it


@pytest.mark.parametrize("target_id", sorted(BUILTIN))
def test_builtin_targets_name_a_backend_class_with_the_whole_protocol(target_id: str) -> None:
    target = BUILTIN[target_id]
    backend = get_backend(target)
    assert backend.target_id == target.id
    for method in ("export", "build", "load", "host_devices"):
        assert callable(getattr(backend, method, None)), f"{target.backend} has no {method}"
    # host_devices is asked of the class's instance without state: a static method.
    assert isinstance(inspect.getattr_static(type(backend), "host_devices"), staticmethod)


def test_host_probe_asks_the_backend_the_target_names(
    modules: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _module(modules, "ep_fake_backend", FAKE_BACKEND)
    target = load_file(_write_target(tmp_path, "ep_fake_backend:FakeBackend"), Target)
    runtimes = host.installed_runtimes({"fake": target})  # device_packages[0] is numpy
    # Without the backend's answer the probe would fall back to the CPU device alone.
    assert [(r.target, r.devices) for r in runtimes] == [("fake", ["CPU", "FAKE"])]


@pytest.mark.parametrize(
    ("backend", "field"),
    [
        ("edgeport.backends.onnxruntime", "backend"),  # no class
        ("edgeport/backends/onnxruntime.py:X", "backend"),  # a path, not a module
        ("edgeport.backends.onnxruntime:Onnx Runtime", "backend"),
    ],
)
def test_a_malformed_backend_is_a_one_line_catalogue_error(
    tmp_path: Path, backend: str, field: str
) -> None:
    with pytest.raises(CatalogError) as caught:
        load_file(_write_target(tmp_path, f'"{backend}"'), Target)
    message = str(caught.value)
    assert f"fake.yaml: {field}: " in message and "\n" not in message
    assert f"got {backend!r}" in message  # the contributor sees which value is wrong


def test_unknown_schemes_and_a_bad_runner_are_one_line_catalogue_errors(tmp_path: Path) -> None:
    path = _write_target(tmp_path, "ep_fake_backend:FakeBackend")
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("schemes: [none]", "schemes: [int9]"), encoding="utf-8")
    with pytest.raises(CatalogError, match=r"fake\.yaml: schemes\.0: .*int9"):
        load_file(path, Target)
    path.write_text(text.replace("runner: fake", "runner: Fake Runner"), encoding="utf-8")
    with pytest.raises(CatalogError, match=r"fake\.yaml: runner: "):
        load_file(path, Target)
    path.write_text(text.replace("runner: fake\n", ""), encoding="utf-8")
    with pytest.raises(CatalogError, match=r"fake\.yaml: runner: Field required"):
        load_file(path, Target)

"""Which pip package provides a Python module, for one-line "needs `pip install ...`" messages.

A conversion that fails because a module is missing should tell the user the exact
package to install, not print `ModuleNotFoundError`. Module and package names differ
often enough (yaml/PyYAML, onnx_ir/onnx-ir, optimum.intel/optimum-intel) to need a table.
"""

from __future__ import annotations

# Module (or dotted prefix) -> the distribution that provides it, where the name differs
# from the module's with '_' replaced by '-'. Longest prefix wins.
_DISTRIBUTIONS = {
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "PIL": "pillow",
    "skimage": "scikit-image",
    "cv2": "opencv-python",
    "google.protobuf": "protobuf",
    "optimum.intel": "optimum-intel",
    "optimum.exporters.openvino": "optimum-intel",
    "optimum.exporters.onnx": "optimum-onnx",
    "optimum.onnxruntime": "optimum-onnx",
    "optimum.onnx": "optimum-onnx",
    "llama_cpp": "llama-cpp-python",
}
# Distributions that come with one of edgeport's extras: install the extra, which pins the
# tested set, rather than the package alone.
_EXTRAS = {
    "openvino": "openvino",
    "openvino-tokenizers": "openvino",
    "nncf": "openvino",
    "optimum-intel": "openvino",
    "llama-cpp-python": "gguf",
    "gguf": "gguf",
    "pillow": "vision",
    "scikit-image": "vision",
    "ray": "ray",
}


def distribution_for(module: str) -> str:
    """The pip package that provides `module` (a dotted import name)."""
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        prefix = ".".join(parts[:length])
        if prefix in _DISTRIBUTIONS:
            return _DISTRIBUTIONS[prefix]
    return parts[0].replace("_", "-").lower()


def install_hint(module: str) -> str:
    """One line: what to install so that `import module` works."""
    package = distribution_for(module)
    extra = _EXTRAS.get(package)
    if extra:
        command = f'pip install -c constraints.txt "edgeport[{extra}]"'
    else:
        command = f"pip install -c constraints.txt {package}"
    return f"needs `{command}` (Python module {module!r} is not installed)"

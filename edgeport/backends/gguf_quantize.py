"""An importance matrix from edgeport's calibration texts, applied to a quantised GGUF.

llama.cpp's quantiser takes its importance matrix as a C++ map (`llama_model_quantize`'s
`imatrix`), which ctypes cannot build. What the matrix does is simple to reproduce: for
each weight matrix, the mean squared activation of every input column on calibration text
(what `llama-imatrix` collects), handed to ggml's own quantisation routine
(`ggml_quantize_chunk`, in the libggml that llama-cpp-python ships) so that rounding errors
on columns that see large activations cost more. The quantiser runs first and picks each
tensor's type (its mix, its fallbacks); each quantised matrix with an importance vector is
then re-quantised from the float export with the same type and written back in place: the
same type and shape take the same bytes, so the file's layout does not change.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edgeport.backends import Feeds

# Types whose ggml quantiser reads an importance vector (the others ignore it).
WEIGHTED_TYPES = frozenset(
    {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"}
)


def activation_importance(
    model_dir: Path, calibration: Sequence[Feeds], layers: int
) -> dict[str, np.ndarray]:
    """{GGUF tensor name: mean squared input activation per column} for every Linear layer
    of the checkpoint, from a forward pass over the calibration windows."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    arch = getattr(gguf.MODEL_ARCH, _arch_name(model_dir))
    names = gguf.get_tensor_name_map(arch, layers)
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    hooks = []
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        target = names.get_name(f"{module_name}.weight", try_suffixes=(".weight",))
        if target is None:
            continue

        def hook(_: Any, inputs: tuple[Any, ...], __: Any, key: str = target) -> None:
            values = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[key] = sums.get(key, 0) + (values * values).sum(dim=0)
            counts[key] = counts.get(key, 0) + int(values.shape[0])

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for feeds in calibration:
                ids = torch.as_tensor(np.asarray(feeds["input_ids"], dtype=np.int64))
                model(input_ids=ids)
    finally:
        for handle in hooks:
            handle.remove()
    return {
        key: (sums[key] / max(counts[key], 1)).float().numpy().astype(np.float32) for key in sums
    }


def _arch_name(model_dir: Path) -> str:
    from edgeport.backends.gguf_writer import ARCHITECTURES, architecture_of, read_config

    return ARCHITECTURES[architecture_of(read_config(model_dir))].name


def _libggml() -> Any:
    import llama_cpp

    folder = Path(llama_cpp.__file__).resolve().parent / "lib"
    for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll", "libggml.so"):
        if (folder / name).is_file():
            lib = ctypes.CDLL(str(folder / name))
            break
    else:  # pragma: no cover - a build that links ggml statically
        raise OSError(f"no libggml-base beside llama_cpp in {folder}")
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    return lib


def _float_rows(tensor: Any) -> np.ndarray:
    """A GGUF tensor's values as float32 rows (dequantised when stored as f16/bf16)."""
    import gguf

    data = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
    rows = int(np.prod([int(n) for n in tensor.shape[1:]]))
    return np.ascontiguousarray(data.reshape(rows, int(tensor.shape[0])), dtype=np.float32)


def apply_importance(source: Path, quantised: Path, importance: dict[str, np.ndarray]) -> list[str]:
    """Re-quantise, in place in `quantised`, every matrix that has an importance vector and a
    type whose quantiser uses one, from its float values in `source`; the names done."""
    import gguf

    floats = {t.name: t for t in gguf.GGUFReader(str(source)).tensors}
    target = gguf.GGUFReader(str(quantised), "r+")
    lib = _libggml()
    done = []
    for tensor in target.tensors:
        weights = importance.get(tensor.name)
        kind = tensor.tensor_type.name
        if weights is None or kind not in WEIGHTED_TYPES or tensor.name not in floats:
            continue
        rows = _float_rows(floats[tensor.name])
        if rows.shape[1] != weights.shape[0]:
            continue
        destination = np.asarray(tensor.data)
        out = np.empty(destination.nbytes, dtype=np.uint8)
        written = lib.ggml_quantize_chunk(
            int(tensor.tensor_type.value),
            rows.ctypes.data,
            out.ctypes.data,
            0,
            rows.shape[0],
            rows.shape[1],
            np.ascontiguousarray(weights, dtype=np.float32).ctypes.data,
        )
        if written != destination.nbytes:
            raise RuntimeError(
                f"ggml wrote {written} bytes for {tensor.name}, expected {destination.nbytes}"
            )
        destination.reshape(-1).view(np.uint8)[:] = out
        done.append(tensor.name)
    target.data.flush()
    del target
    return done


def _quantize_rows(lib: Any, kind: str, rows: np.ndarray, weights: np.ndarray | None) -> Any:
    """`rows` (float32, one weight row per line) in ggml type `kind`: the array to add to
    a GGUFWriter (uint8 blocks for quantised types)."""
    import gguf

    qtype = gguf.GGMLQuantizationType[kind]
    if kind in {"F32", "F16", "BF16"}:
        return gguf.quants.quantize(rows, qtype)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    if rows.shape[1] % block:
        raise ValueError(f"rows of {rows.shape[1]} values do not fit {kind} blocks of {block}")
    out = np.empty((rows.shape[0], rows.shape[1] // block * size), dtype=np.uint8)
    pointer = None
    if weights is not None and kind in WEIGHTED_TYPES and weights.shape[0] == rows.shape[1]:
        weights = np.ascontiguousarray(weights, dtype=np.float32)
        pointer = weights.ctypes.data
    written = lib.ggml_quantize_chunk(
        int(qtype.value),
        rows.ctypes.data,
        out.ctypes.data,
        0,
        rows.shape[0],
        rows.shape[1],
        pointer,
    )
    if written != out.nbytes:
        raise RuntimeError(f"ggml wrote {written} bytes, expected {out.nbytes}")
    return out


def retype(
    source: Path,
    quantised: Path,
    out: Path,
    types: dict[str, str],
    importance: dict[str, np.ndarray] | None = None,
) -> list[str]:
    """Copy `quantised` to `out` with the tensors named in `types` re-quantised from their
    float values in `source` to the given ggml type (weighted by `importance` where the
    type uses it); every other tensor and all metadata unchanged. A type whose blocks the
    rows do not fit (Q6_K for SmolLM2's 576-wide rows) becomes llama.cpp's own fallback
    for it (FALLBACK_TYPES), as its quantiser does. The names changed."""
    import gguf

    reader = gguf.GGUFReader(str(quantised))
    floats = {t.name: t for t in gguf.GGUFReader(str(source)).tensors}
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(out), str(arch))
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    lib = _libggml()
    changed = []
    try:
        for tensor in reader.tensors:
            wanted = types.get(tensor.name)
            if wanted is None or wanted == tensor.tensor_type.name:
                writer.add_tensor(
                    tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type
                )
                continue
            rows = _float_rows(floats[tensor.name])
            wanted = next(iter(fitting_types([wanted], rows.shape[1])), wanted)
            if wanted == tensor.tensor_type.name:  # llama.cpp already wrote the fallback
                writer.add_tensor(
                    tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type
                )
                continue
            weights = (importance or {}).get(tensor.name)
            data = _quantize_rows(lib, wanted, rows, weights)
            writer.add_tensor(tensor.name, data, raw_dtype=gguf.GGMLQuantizationType[wanted])
            changed.append(tensor.name)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return changed


# What llama.cpp's quantiser gives a matrix whose rows do not fit a K-quant super-block of
# 256 values (llama_tensor_get_type's fallbacks): the fit does the same.
FALLBACK_TYPES = {
    "Q2_K": "Q4_0",
    "Q3_K": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
    "IQ4_XS": "IQ4_NL",
}


def tensor_bytes(kind: str, rows: int, columns: int) -> int:
    """Bytes of a `rows` x `columns` matrix in ggml type `kind` (columns fit its blocks)."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]]
    return rows * (columns // block) * size


def fitting_types(kinds: Sequence[str], columns: int) -> list[str]:
    """The types among `kinds` a row of `columns` values fits, each replaced by llama.cpp's
    fallback where it does not; in the given order, without repeats."""
    import gguf

    out: list[str] = []
    for kind in kinds:
        for candidate in (kind, FALLBACK_TYPES.get(kind)):
            if candidate is None:
                continue
            block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[candidate]][0]
            if columns % block == 0:
                if candidate not in out:
                    out.append(candidate)
                break
    return out


# One type a matrix may get: (ggml type, bytes, importance-weighted squared error).
FitOption = tuple[str, int, float]


def quantisation_error(lib: Any, kind: str, rows: np.ndarray, weights: np.ndarray) -> float:
    """Σ_c weights[c] · Σ_r (W[r,c] − Ŵ[r,c])²: the rounding error of `rows` in type `kind`
    (quantised by ggml with the importance vector, dequantised by gguf), each column
    weighted by its importance."""
    import gguf

    data = _quantize_rows(lib, kind, rows, weights)
    restored = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[kind])
    restored = np.asarray(restored, dtype=np.float32).reshape(rows.shape)
    squared = np.square(rows.astype(np.float64) - restored).sum(axis=0)
    return float(squared @ weights.astype(np.float64))


def fit_options(
    source: Path,
    names: Sequence[str],
    kinds: Sequence[str],
    importance: dict[str, np.ndarray],
) -> dict[str, list[FitOption]]:
    """{tensor: [(type, bytes, error)] for each type of `kinds` its rows fit} for the named
    matrices of the float GGUF `source`; columns without an importance vector weigh 1."""
    import gguf

    floats = {t.name: t for t in gguf.GGUFReader(str(source)).tensors}
    lib = _libggml()
    options: dict[str, list[FitOption]] = {}
    for name in names:
        rows = _float_rows(floats[name])
        weights = importance.get(name)
        if weights is None or weights.shape[0] != rows.shape[1]:
            weights = np.ones(rows.shape[1], dtype=np.float32)
        options[name] = [
            (
                kind,
                tensor_bytes(kind, rows.shape[0], rows.shape[1]),
                quantisation_error(lib, kind, rows, weights),
            )
            for kind in fitting_types(kinds, rows.shape[1])
        ]
    return options


def fit_types(options: dict[str, list[FitOption]], budget: int) -> dict[str, str]:
    """Each tensor's type such that their bytes total at most `budget`: every tensor at its
    cheapest option, then, greedily, the upgrade with the largest error reduction per extra
    byte that still fits, until none does. A budget below the cheapest mix is a
    DoesNotFitError."""
    from edgeport.errors import DoesNotFitError

    chosen = {name: min(opts, key=lambda o: (o[1], o[2])) for name, opts in options.items() if opts}
    missing = sorted(name for name, opts in options.items() if not opts)
    if missing:
        raise DoesNotFitError(f"no allowed type fits the rows of {', '.join(missing[:4])}")
    total = sum(option[1] for option in chosen.values())
    if total > budget:
        raise DoesNotFitError(
            f"the cheapest mix of the allowed types takes {total / 2**20:.2f} MB, "
            f"over the budget of {budget / 2**20:.2f} MB"
        )
    while True:
        best: tuple[float, str, FitOption] | None = None
        for name, options_of in options.items():
            _, size, error = chosen[name]
            for option in options_of:
                extra, gain = option[1] - size, error - option[2]
                if gain <= 0 or total + extra > budget:
                    continue
                ratio = gain / extra if extra > 0 else float("inf")
                if best is None or ratio > best[0]:
                    best = (ratio, name, option)
        if best is None:
            return {name: option[0] for name, option in chosen.items()}
        _, name, option = best
        total += option[1] - chosen[name][1]
        chosen[name] = option

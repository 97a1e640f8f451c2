"""llama.cpp backend: GGUF written from the checkpoint, quantised by llama.cpp, run by it.

export: the checkpoint as one GGUF at its own float precision (gguf_writer.py).
build: llama.cpp's own quantiser (`llama_model_quantize`, through llama-cpp-python) to
the recipe's file type; the per-tensor types llama.cpp chose (Q6_K output head, K-quant
fallbacks for rows that do not fit a super-block) are read back with gguf's reader and
written as notes, so the manifest shows them. The artifact also carries an Ollama
`Modelfile` and a README with the equivalent `llama-cli`/`llama-server` commands.
load: a `DecoderSession` on `llama_cpp.Llama` with logits for every position: validation
goes through llama.cpp itself, on the token ids it is given (no BOS added).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeport.backends import Artifact, ExportedModel, Feeds, PartSource
from edgeport.backends.gguf_writer import OutType, read_config, write_gguf
from edgeport.errors import BadInputError, DoesNotFitError, EdgeportError, UnsupportedError
from edgeport.runners import ondevice

if TYPE_CHECKING:
    from edgeport.schemas import Candidate, ModelInfo

MODEL_FILE = "model.gguf"
EXPORT_FILE = "export.gguf"
MODELFILE = "Modelfile"
IMPORTANCE_FILE = "importance.npz"
README = "README.md"
# Tokens a validation window, a generation prompt plus its new tokens, or the bench's
# prompt and continuation may need; the session grows its context when asked for more.
DEFAULT_CONTEXT = ondevice.LLAMA_CPP_CONTEXT

# Recipe gguf_type -> (llama_ftype constant in llama_cpp, the ggml type most weights get).
FILE_TYPES: dict[str, tuple[str, str]] = {
    "F32": ("LLAMA_FTYPE_ALL_F32", "F32"),
    "F16": ("LLAMA_FTYPE_MOSTLY_F16", "F16"),
    "BF16": ("LLAMA_FTYPE_MOSTLY_BF16", "BF16"),
    "Q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", "Q8_0"),
    "Q6_K": ("LLAMA_FTYPE_MOSTLY_Q6_K", "Q6_K"),
    "Q5_K_M": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", "Q5_K"),
    "Q4_K_M": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q4_K"),
    "Q4_0": ("LLAMA_FTYPE_MOSTLY_Q4_0", "Q4_0"),
    "IQ4_XS": ("LLAMA_FTYPE_MOSTLY_IQ4_XS", "IQ4_XS"),
}
_SHOWN_NAMES = 8


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def gguf_tensor_types(path: Path) -> list[tuple[str, str, int]]:
    """(name, ggml type, dimensions) of every tensor of a GGUF file; a file that is not
    a whole GGUF is a BadInputError with one line."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        return [(t.name, t.tensor_type.name, len(t.shape)) for t in reader.tensors]
    except (ValueError, IndexError, KeyError, OSError, TypeError) as exc:
        raise BadInputError(f"{path.name} is not a valid GGUF file: {_one_line(exc)}") from exc


def type_notes(path: Path, gguf_type: str, by_recipe: Sequence[str] = ()) -> list[str]:
    """Which matrices have another type than the file type's own: llama.cpp's choice (its
    mix for *_M types, the Q6_K output head, fallbacks for rows a K-quant block does not
    fit), or the recipe's (`by_recipe`, its gguf_tensor_types)."""
    nominal = FILE_TYPES[gguf_type][1]
    tensors = gguf_tensor_types(path)
    matrices = [(name, kind) for name, kind, dims in tensors if dims >= 2]
    others: dict[str, list[str]] = {}
    for name, kind in matrices:
        if kind != nominal:
            others.setdefault(kind, []).append(name)
    same = len(matrices) - sum(len(names) for names in others.values())
    notes = [f"GGUF {gguf_type}: {same} of {len(matrices)} weight matrices {nominal}"]
    chosen = set(by_recipe)
    for kind, names in sorted(others.items()):
        for who, group in (
            ("llama.cpp's choice", [n for n in names if n not in chosen]),
            ("the recipe's", [n for n in names if n in chosen]),
        ):
            if not group:
                continue
            shown = ", ".join(group[:_SHOWN_NAMES])
            more = f" and {len(group) - _SHOWN_NAMES} more" if len(group) > _SHOWN_NAMES else ""
            notes.append(f"GGUF {gguf_type}: {len(group)} as {kind} ({who}): {shown}{more}")
    return notes


def quantize(
    source: Path, out: Path, gguf_type: str, threads: int, *, token_embedding_type: str = ""
) -> None:
    """llama.cpp's quantiser from `source` (a float GGUF) to `out` at `gguf_type`; the token
    embeddings at `token_embedding_type` (a ggml type name) when given."""
    import llama_cpp

    if gguf_type not in FILE_TYPES:
        raise UnsupportedError(f"llama.cpp backend has no GGUF type {gguf_type!r}")
    gguf_tensor_types(source)  # a broken input is one clear line, not a C++ abort
    # llama-cpp-python's log callback echoes every tensor to stderr; the types llama.cpp
    # chose are read back from the file instead (type_notes).
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = max(1, threads)
    params.ftype = getattr(llama_cpp, FILE_TYPES[gguf_type][0])
    if token_embedding_type:
        import gguf  # ggml's type numbers, as the file format spells them

        params.token_embedding_type = gguf.GGMLQuantizationType[token_embedding_type].value
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(out).encode(), ctypes.byref(params)
    )
    if status != 0 or not out.is_file():
        raise EdgeportError(f"llama.cpp could not quantise {source.name} to {gguf_type} ({status})")


def _export_type(config: Mapping[str, Any]) -> OutType:
    """The checkpoint's own float type: quantising from it loses nothing first."""
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return {"bfloat16": "bf16", "float16": "f16"}.get(dtype, "f32")  # type: ignore[return-value]


class LlamaCppDecoderSession:
    """`run` scores a full window from an empty cache (logits at every position);
    `generate` decodes greedily (argmax) through llama.cpp's KV cache."""

    input_names = ("input_ids", "attention_mask")
    output_names = ("logits",)

    def __init__(self, path: Path, threads: int, n_ctx: int = DEFAULT_CONTEXT) -> None:
        self._path = path
        self._threads = max(1, threads)
        self._n_ctx = 0
        self._llm: Any = None
        self._open(n_ctx)

    def _open(self, n_ctx: int) -> None:
        gguf_tensor_types(self._path)  # truncated or not GGUF: one line, before llama.cpp
        try:
            self._llm = ondevice.llama_cpp_model(self._path, self._threads, n_ctx)
        except (ValueError, RuntimeError, OSError) as exc:
            raise BadInputError(
                f"llama.cpp cannot load {self._path.name}: {_one_line(exc)}"
            ) from exc
        self._n_ctx = n_ctx

    def _fit(self, tokens: int) -> None:
        if tokens > self._n_ctx:
            self._llm.close()
            self._open(max(tokens, 2 * self._n_ctx))

    def _score(self, ids: Sequence[int]) -> np.ndarray:
        self._fit(len(ids))
        self._llm.reset()  # n_tokens = 0: eval clears the cache from there
        self._llm.eval(list(ids))
        return np.array(self._llm.scores[: len(ids)], dtype=np.float32)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = np.asarray(feeds["input_ids"], dtype=np.int64)
        mask = feeds.get("attention_mask")
        rows = []
        for row, values in enumerate(ids):
            length = int(np.asarray(mask)[row].sum()) if mask is not None else len(values)
            logits = self._score([int(t) for t in values[:length]])
            if length < len(values):  # right padding: rows past the text stay zero
                padded = np.zeros((len(values), logits.shape[1]), dtype=np.float32)
                padded[:length] = logits
                logits = padded
            rows.append(logits)
        return {"logits": np.stack(rows)}

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        self._fit(len(prompt_ids) + max_new_tokens)
        llm = self._llm
        llm.reset()
        llm.eval(list(prompt_ids))
        generated: list[int] = []
        for step in range(max_new_tokens):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            generated.append(token)
            if step + 1 < max_new_tokens:
                llm.eval([token])
        return generated


def _modelfile(model_dir: Path, config: Mapping[str, Any], eos: Sequence[str]) -> str:
    lines = [
        "# Ollama: `ollama create NAME -f Modelfile`, then `ollama run NAME`.",
        f"FROM ./{MODEL_FILE}",
        "PARAMETER temperature 0",
        f"PARAMETER num_ctx {int(config.get('max_position_embeddings') or 2048)}",
    ]
    lines += [f'PARAMETER stop "{token}"' for token in eos]
    template = _chat_template(model_dir)
    if template:
        lines.append(
            "# The GGUF carries the model's chat template (tokenizer.chat_template); "
            "Ollama reads it from there."
        )
    else:
        lines.append('TEMPLATE """{{ .Prompt }}"""')
    return "\n".join(lines) + "\n"


def _chat_template(model_dir: Path) -> str:
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return ""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return ""
    template = config.get("chat_template") if isinstance(config, dict) else None
    return template if isinstance(template, str) else ""


def _eos_texts(model_dir: Path) -> list[str]:
    path = model_dir / "special_tokens_map.json"
    try:
        tokens = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return []
    eos = tokens.get("eos_token") if isinstance(tokens, dict) else None
    if isinstance(eos, dict):
        eos = eos.get("content")
    return [eos] if isinstance(eos, str) and '"' not in eos else []


def _readme(name: str, gguf_type: str, context: int) -> str:
    return f"""# {name} as GGUF ({gguf_type}) for llama.cpp

`{MODEL_FILE}` runs in any llama.cpp build and in Ollama; edgeport validated it against
the original PyTorch model through llama.cpp itself (see report.md and manifest.json).

```bash
pip install -r requirements.txt                       # llama-cpp-python, numpy
python run.py "def add(" --max-new-tokens 32          # streams text, prints tokens/s
python verify.py                                      # re-checks files and golden tokens

# llama.cpp's own tools (https://github.com/ggml-org/llama.cpp)
llama-cli -m {MODEL_FILE} -c {context} --temp 0 -n 32 -p "def add("
llama-server -m {MODEL_FILE} -c {context} --port 8080

# Ollama
ollama create {name.lower()} -f {MODELFILE} && ollama run {name.lower()}
```
"""


# Bytes kept aside for what rewriting a GGUF may move: each tensor's 32-byte alignment.
_ALIGNMENT = 32


def fit_to_budget(
    source: Path,
    target: Path,
    kinds: Sequence[str],
    importance: dict[str, np.ndarray],
    budget: int | None,
    *,
    limited: bool = False,
) -> tuple[list[str], list[str]]:
    """Re-type, in place, every weight matrix of `target` but the token embeddings to one
    of `kinds`, chosen by sensitivity (gguf_quantize.fit_types) so that the whole file
    takes at most `budget` bytes (None: no limit, every matrix at its least error); the
    matrices it typed and the notes (budget, the mix, the upgraded matrices).
    `limited`: the budget is the user's --max-size, not the device's memory."""
    import gguf

    from edgeport.backends.gguf_quantize import fit_options, fit_types, retype

    reader = gguf.GGUFReader(str(target))
    tensors = {t.name: t for t in reader.tensors}
    names = [n for n, t in tensors.items() if len(t.shape) >= 2 and n != "token_embd.weight"]
    fixed = target.stat().st_size - sum(int(tensors[n].n_bytes) for n in names)
    fixed += _ALIGNMENT * len(tensors)
    del reader, tensors
    options = fit_options(source, names, kinds, importance)
    available = (budget if budget is not None else 2**62) - fixed
    types = fit_types(options, available)
    staging = target.with_suffix(".fitted.gguf")
    try:
        retype(source, target, staging, types, importance)
    except ValueError as exc:
        staging.unlink(missing_ok=True)
        raise UnsupportedError(f"gguf_fit: {_one_line(exc)}") from exc
    staging.replace(target)
    size = target.stat().st_size
    if budget is not None and size > budget:  # the margin is meant to make this impossible
        raise DoesNotFitError(
            f"gguf_fit wrote {size / 2**20:.2f} MB, over its budget of {budget / 2**20:.2f} MB"
        )
    counts: dict[str, int] = {}
    for kind in types.values():
        counts[kind] = counts.get(kind, 0) + 1
    cheapest = {n: min(o, key=lambda x: (x[1], x[2]))[0] for n, o in options.items() if o}
    upgraded = [f"{n}={k}" for n, k in types.items() if k != cheapest[n]]
    mix = ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))
    if budget is None:
        whence = "no budget"
    else:
        origin = "--max-size" if limited else "the weights' share of the device's memory"
        whence = f"budget {budget / 2**20:.2f} MB ({origin})"
    shown = ", ".join(upgraded[: _SHOWN_NAMES * 2])
    more = (
        f" and {len(upgraded) - _SHOWN_NAMES * 2} more" if len(upgraded) > _SHOWN_NAMES * 2 else ""
    )
    notes = [
        f"GGUF fit: {whence}, file {size / 2**20:.2f} MB; {len(types)} matrices by sensitivity: "
        f"{mix}",
        f"GGUF fit: {len(upgraded)} upgraded from the cheapest type: {shown or 'none'}{more}",
    ]
    return list(types), notes


class LlamaCppBackend:
    target_id = "llama.cpp"

    @staticmethod
    def host_devices() -> list[str]:
        import llama_cpp

        devices = ["CPU"]
        if llama_cpp.llama_supports_gpu_offload():
            devices.append("GPU")
        return devices

    def export(
        self,
        model: ModelInfo,
        workdir: Path,
        *,
        trust_remote_code: bool,
        parts: Sequence[PartSource] = (),
    ) -> ExportedModel:
        if parts:
            raise UnsupportedError("llama.cpp runs one-graph decoder-only language models")
        out = workdir / "export"
        out.mkdir(parents=True, exist_ok=True)
        config = read_config(model.local_path)
        outtype = _export_type(config)
        notes = write_gguf(model.local_path, out / EXPORT_FILE, outtype)
        (out / "notes.json").write_text(json.dumps(notes), encoding="utf-8")
        return ExportedModel(
            self.target_id,
            out,
            EXPORT_FILE,
            LlamaCppDecoderSession.input_names,
            LlamaCppDecoderSession.output_names,
        )

    def build(
        self,
        exported: ExportedModel,
        candidate: Candidate,
        model: ModelInfo,
        calibration: Sequence[Feeds],
        workdir: Path,
    ) -> Artifact:
        quantization = candidate.recipe.quantize
        gguf_type = quantization.gguf_type
        if quantization.scheme != "gguf" or gguf_type is None:
            raise UnsupportedError(
                f"llama.cpp backend builds only scheme gguf, not {quantization.scheme!r}"
            )
        out = workdir / "out"
        out.mkdir(parents=True, exist_ok=True)
        threads = max(1, min(os.cpu_count() or 1, 8))
        source = exported.directory / exported.model_file
        tied = "output.weight" not in {name for name, _, _ in gguf_tensor_types(source)}
        # A table tied to the head is the head: llama.cpp's type for the output stays.
        embedding_type = "" if tied else (quantization.gguf_token_embedding_type or "")
        quantize(
            source,
            out / MODEL_FILE,
            gguf_type,
            threads,
            token_embedding_type=embedding_type,
        )
        importance: dict[str, np.ndarray] = {}
        notes_done: list[str] = []
        if quantization.importance_matrix:
            importance, notes_done = self._apply_importance(
                exported, model, calibration, out / MODEL_FILE
            )
        by_recipe = self._retype(
            source, out / MODEL_FILE, quantization.gguf_tensor_types, importance
        )
        fit_notes: list[str] = []
        if quantization.gguf_fit:
            fitted, fit_notes = fit_to_budget(
                source,
                out / MODEL_FILE,
                list(quantization.gguf_fit_types),
                importance,
                candidate.size_budget_bytes,
                limited=candidate.max_model_bytes is not None,
            )
            by_recipe += fitted
        notes_path = exported.directory / "notes.json"
        notes: list[str] = (
            json.loads(notes_path.read_text(encoding="utf-8")) if notes_path.is_file() else []
        )
        if embedding_type:
            by_recipe.append("token_embd.weight")
        notes += type_notes(out / MODEL_FILE, gguf_type, by_recipe) + notes_done + fit_notes
        config = read_config(model.local_path)
        context = int(config.get("max_position_embeddings") or 2048)
        (out / MODELFILE).write_text(
            _modelfile(model.local_path, config, _eos_texts(model.local_path)), encoding="utf-8"
        )
        (out / README).write_text(
            _readme(model.display_name.rsplit("/", 1)[-1], gguf_type, min(context, 4096)),
            encoding="utf-8",
        )
        return Artifact(
            directory=out,
            model_file=MODEL_FILE,
            files=(MODEL_FILE, MODELFILE, README),
            input_names=exported.input_names,
            output_names=exported.output_names,
            notes=tuple(notes),
        )

    @staticmethod
    def _retype(
        source: Path, target: Path, patterns: Mapping[str, str], importance: dict[str, np.ndarray]
    ) -> list[str]:
        """Re-quantise the weight matrices the recipe's gguf_tensor_types name (first
        matching regex wins) to that type; the names changed."""
        from edgeport.backends.gguf_quantize import retype

        if not patterns:
            return []
        types = {}
        for name, _, dims in gguf_tensor_types(target):
            wanted = next((t for p, t in patterns.items() if re.search(p, name)), None)
            if dims >= 2 and wanted is not None:
                types[name] = wanted
        staging = target.with_suffix(".retyped.gguf")
        try:
            changed = retype(source, target, staging, types, importance)
        except ValueError as exc:
            staging.unlink(missing_ok=True)
            raise UnsupportedError(f"gguf_tensor_types: {_one_line(exc)}") from exc
        staging.replace(target)
        return changed

    @staticmethod
    def _apply_importance(
        exported: ExportedModel, model: ModelInfo, calibration: Sequence[Feeds], target: Path
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """Weigh the quantised matrices of `target` by activations on the calibration texts
        (gguf_quantize.py); the importance vectors are computed once per export."""
        from edgeport.backends.gguf_quantize import activation_importance, apply_importance

        texts = [feeds for feeds in calibration if "input_ids" in feeds]
        if not texts:
            return {}, ["importance matrix skipped: no calibration texts; plain rounding"]
        cached = exported.directory / IMPORTANCE_FILE
        if cached.is_file():
            with np.load(cached) as data:
                importance = {name: data[name] for name in data.files}
        else:
            layers = int(read_config(model.local_path)["num_hidden_layers"])
            importance = activation_importance(model.local_path, texts, layers)
            np.savez(cached, **importance)  # type: ignore[arg-type]
        done = apply_importance(exported.directory / exported.model_file, target, importance)
        tokens = sum(int(np.asarray(feeds["input_ids"]).size) for feeds in texts)
        return importance, [
            f"importance matrix: {len(done)} matrices weighted by their input activations on "
            f"{len(texts)} calibration texts ({tokens} tokens)"
        ]

    def load(self, artifact: Artifact, device: str, threads: int) -> LlamaCppDecoderSession:
        return LlamaCppDecoderSession(artifact.model_path, threads)

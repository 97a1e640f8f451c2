"""Resolve a Hub id (with revision) or a local folder to files on disk.

Goes through huggingface_hub so its cache, token and offline mode (HF_HUB_OFFLINE=1)
behave exactly as for any other Hugging Face tool. Applies edgeport's safety rules:
no remote code and no pickle weights unless the user asks for them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeport.errors import BadInputError, ModelNotFoundError, SecurityError

SAFE_WEIGHT_SUFFIXES = (".safetensors",)
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Files a conversion never needs: other frameworks' weights and prebuilt exports.
_ALWAYS_IGNORED = [
    "*.h5",
    "*.msgpack",
    "*.ot",
    "*.onnx",
    "*.onnx_data",
    "onnx/*",
    "openvino/*",
    "*.gguf",
    "*.mlmodel",
    "*.tflite",
    "coreml/*",
]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class ResolvedModel:
    source: str
    local_path: Path
    repo_id: str | None
    revision: str | None
    commit: str | None


# A config.json is a few KB; the largest real ones (tens of thousands of labels) are a
# few MB. Anything larger is not a config.
MAX_CONFIG_BYTES = 16 * 1024 * 1024


def is_folder(path: Path) -> bool:
    """Path.is_dir, False (not an OSError) for a name too long or otherwise impossible."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def looks_like_path(source: str) -> bool:
    """A local folder rather than a Hub id (`./x`, `/x`, `~/x`, `a/b/c`, or it exists)."""
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        return True
    try:
        return Path(source).exists()
    except (OSError, ValueError):  # a name too long to exist, or a NUL byte
        return False


def looks_like_hub_id(source: str) -> bool:
    """`name` or `org/name` as the Hub spells them (whether it exists is another matter)."""
    return bool(_HUB_ID.match(source))


def read_json_file(path: Path, *, max_bytes: int = MAX_CONFIG_BYTES) -> object:
    """A JSON file of a model folder; malformed, binary or huge: one-line BadInputError."""
    from edgeport.catalog import read_text_file, shorten

    text = read_text_file(path, max_bytes=max_bytes)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{path}: malformed JSON: {exc.msg} (line {exc.lineno})") from exc
    except RecursionError as exc:
        raise BadInputError(f"{path}: malformed JSON: values nested too deeply") from exc
    except ValueError as exc:  # a 5000-digit integer
        raise BadInputError(f"{path}: malformed JSON: {shorten(str(exc), 120)}") from exc


def read_config(folder: Path) -> dict[str, Any]:
    """The model's config.json as a dict; missing: ModelNotFoundError; malformed: BadInputError."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelNotFoundError(f"{folder} has no config.json: not a transformers model folder")
    config = read_json_file(config_path)
    if not isinstance(config, dict):
        raise BadInputError(f"{config_path}: expected a JSON object")
    return config


def resolve(
    source: str,
    revision: str | None = None,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> ResolvedModel:
    if looks_like_path(source):
        if revision:
            raise BadInputError("--revision applies to Hub ids, not to a local folder")
        path = Path(source).expanduser()
        if not is_folder(path):
            from edgeport.catalog import shorten

            raise ModelNotFoundError(f"model folder not found: {shorten(source, 240)}")
        resolved = ResolvedModel(source, path.resolve(), None, None, None)
    else:
        resolved = _resolve_hub(source, revision, allow_pickle=allow_pickle)
    check_safety(
        resolved.local_path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
    )
    return resolved


def _resolve_hub(repo_id: str, revision: str | None, *, allow_pickle: bool) -> ResolvedModel:
    if not looks_like_hub_id(repo_id):
        from edgeport.catalog import echo

        raise BadInputError(f"not a Hub model id or an existing folder: {echo(repo_id)}")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    ignore = list(_ALWAYS_IGNORED)
    if not allow_pickle:
        ignore += [f"*{suffix}" for suffix in PICKLE_WEIGHT_SUFFIXES]
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, ignore_patterns=ignore))
    except RevisionNotFoundError as exc:
        raise ModelNotFoundError(f"revision {revision!r} not found for {repo_id}") from exc
    except GatedRepoError as exc:
        raise ModelNotFoundError(f"{repo_id} is gated: log in with `hf auth login`") from exc
    except RepositoryNotFoundError as exc:
        raise ModelNotFoundError(f"model {repo_id!r} not found on the Hub") from exc
    except LocalEntryNotFoundError as exc:
        where = f"revision {revision!r} of " if revision else ""
        if constants.HF_HUB_OFFLINE:
            raise ModelNotFoundError(
                f"{where}{repo_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
                "and HF_HUB_OFFLINE=1 forbids downloading it"
            ) from exc
        raise ModelNotFoundError(
            f"{where}{repo_id} could not be downloaded and is not cached: {exc}"
        ) from exc
    except HFValidationError as exc:
        raise BadInputError(f"invalid model id or revision: {exc}") from exc

    # snapshot folders are named by commit hash: that is the exact version we convert.
    commit = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else None
    if not allow_pickle and not any(folder.rglob("*.safetensors")):
        _refuse_pickle_only(repo_id)
    return ResolvedModel(repo_id, folder, repo_id, revision or "main", commit)


def _refuse_pickle_only(name: str) -> None:
    raise SecurityError(
        f"{name} has no safetensors weights; loading pickle weights can run arbitrary code. "
        "Pass --allow-pickle if you trust this model"
    )


def check_safety(folder: Path, *, trust_remote_code: bool, allow_pickle: bool) -> None:
    config = read_config(folder)
    if config.get("auto_map") and not trust_remote_code:
        raise SecurityError(
            "this model needs custom code from its repository (config.json auto_map); "
            "review it, then pass --trust-remote-code"
        )
    weights = [p for p in folder.rglob("*") if p.is_file()]
    has_safe = any(p.suffix in SAFE_WEIGHT_SUFFIXES for p in weights)
    has_pickle = any(p.suffix in PICKLE_WEIGHT_SUFFIXES for p in weights)
    if not has_safe and has_pickle and not allow_pickle:
        _refuse_pickle_only(str(folder))
    if not has_safe and not has_pickle:
        raise ModelNotFoundError(f"{folder} holds no model weights (*.safetensors)")

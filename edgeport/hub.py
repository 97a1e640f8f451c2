"""Resolve a Hub id (with revision) or a local folder to files on disk.

Goes through huggingface_hub so its cache, token and offline mode (HF_HUB_OFFLINE=1)
behave exactly as for any other Hugging Face tool. Applies edgeport's safety rules:
no remote code and no pickle weights unless the user asks for them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
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


def local_folder(source: str, revision: str | None) -> Path:
    """The model folder `source` names, resolved; one-line errors for what it cannot be."""
    if revision:
        raise BadInputError("--revision applies to Hub ids, not to a local folder")
    path = Path(source).expanduser()
    if not is_folder(path):
        from edgeport.catalog import shorten

        raise ModelNotFoundError(f"model folder not found: {shorten(source, 240)}")
    return path.resolve()


def resolve(
    source: str,
    revision: str | None = None,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> ResolvedModel:
    if looks_like_path(source):
        resolved = ResolvedModel(source, local_folder(source, revision), None, None, None)
    else:
        resolved = _resolve_hub(source, revision, allow_pickle=allow_pickle)
    check_safety(
        resolved.local_path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
    )
    return resolved


def _check_hub_id(repo_id: str) -> None:
    if not looks_like_hub_id(repo_id):
        from edgeport.catalog import echo

        raise BadInputError(f"not a Hub model id or an existing folder: {echo(repo_id)}")


@contextmanager
def _hub_errors(repo_id: str, revision: str | None) -> Iterator[None]:
    """huggingface_hub's exceptions as edgeport's one-line errors (exit 2)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
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


def _snapshot(
    repo_id: str,
    revision: str | None,
    *,
    allow_patterns: list[str] | None = None,
    ignore_patterns: list[str] | None = None,
) -> tuple[Path, str | None]:
    """The snapshot folder of the files matching the patterns (through the cache, and only
    the cache under HF_HUB_OFFLINE=1), and its commit."""
    from huggingface_hub import snapshot_download

    with _hub_errors(repo_id, revision):
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=allow_patterns,
                ignore_patterns=ignore_patterns,
            )
        )
    # snapshot folders are named by commit hash: that is the exact version we convert.
    commit = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else None
    return folder, commit


def _resolve_hub(repo_id: str, revision: str | None, *, allow_pickle: bool) -> ResolvedModel:
    _check_hub_id(repo_id)
    ignore = list(_ALWAYS_IGNORED)
    if not allow_pickle:
        ignore += [f"*{suffix}" for suffix in PICKLE_WEIGHT_SUFFIXES]
    folder, commit = _snapshot(repo_id, revision, ignore_patterns=ignore)
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


# ---------------------------------------------------------------------- metadata only

# What the fit check reads: the config and, through them or the Hub's range requests,
# the safetensors headers. Never the weights.
_METADATA_FILES = ["config.json", "generation_config.json"]
# What the families then read to plan a model that fits: small JSON files (tokenizer and
# processor settings, sentence-transformers modules and pooling) and WordPiece vocabularies.
_PLANNING_FILES = ["*.json", "vocab.txt"]


@dataclass(frozen=True)
class ModelMetadata:
    """A model as planning sees it: its config and small files in `resolved.local_path`,
    the list of every file it has, and the headers of its safetensors weights."""

    resolved: ResolvedModel
    files: tuple[str, ...]
    # Weight file name -> safetensors header; None when some header could not be read
    # without downloading the weights (offline, shards not cached): the planner then
    # estimates from config.json.
    headers: dict[str, dict[str, Any]] | None
    # The Hub answered: missing planning files can be downloaded.
    online: bool = False

    @property
    def has_safetensors(self) -> bool:
        return any(name.endswith(SAFE_WEIGHT_SUFFIXES) for name in self.files)

    @property
    def has_pickle(self) -> bool:
        return any(name.endswith(PICKLE_WEIGHT_SUFFIXES) for name in self.files)


def resolve_metadata(source: str, revision: str | None = None) -> ModelMetadata:
    """A Hub id or local folder, resolved without its weights.

    For a Hub id: config.json and generation_config.json through the cache (offline
    mode, cache and errors exactly as `resolve`), the file list (the Hub's, or the cached
    snapshot's offline), and each weight file's header from the cached file when there is
    one, else from the Hub by HTTP range requests (huggingface_hub's safetensors metadata
    API). Safety rules are `check_metadata_safety`'s, applied by the caller once the fit
    check has answered.
    """
    from edgeport.model_shape import read_safetensors_header

    if looks_like_path(source):
        folder = local_folder(source, revision)
        files = tuple(
            sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        )
        headers = {
            name: read_safetensors_header(folder / name)
            for name in files
            if "/" not in name and name.endswith(SAFE_WEIGHT_SUFFIXES)
        }
        resolved = ResolvedModel(source, folder, None, None, None)
        return ModelMetadata(resolved, files, headers or None)

    _check_hub_id(source)
    listing, online = _hub_file_list(source, revision)
    folder, commit = _snapshot(source, revision, allow_patterns=list(_METADATA_FILES))
    if listing is None:  # offline: what the cache holds is what we know of
        listing = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    files = tuple(sorted(listing))
    resolved = ResolvedModel(source, folder, source, revision or "main", commit)
    shards = [name for name in files if "/" not in name and name.endswith(SAFE_WEIGHT_SUFFIXES)]
    found: dict[str, dict[str, Any]] = {}
    missing = []
    for name in shards:
        path = folder / name
        if path.is_file():  # cached (or a test cache's header-only file)
            found[name] = read_safetensors_header(path)
        else:
            missing.append(name)
    if missing:
        remote = _remote_headers(source, commit or revision) if online else {}
        found.update({name: remote[name] for name in missing if name in remote})
    # No weight file known (a cache holding config.json alone) or one unreadable: the
    # planner estimates from config.json.
    complete = bool(shards) and all(name in found for name in missing)
    return ModelMetadata(resolved, files, found if complete else None, online)


def _hub_file_list(repo_id: str, revision: str | None) -> tuple[list[str] | None, bool]:
    """The repository's files at `revision` and whether the Hub answered: (None, False)
    offline or when it cannot be reached (the cache then answers, as for snapshots)."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return None, False
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    with _hub_errors(repo_id, revision):
        try:
            info = HfApi().model_info(repo_id, revision=revision, files_metadata=False)
        except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError):
            raise
        # No connection, a timeout, the Hub down (requests' errors and huggingface_hub's
        # OfflineModeIsEnabled are OSErrors): the cache answers, as for snapshot_download.
        except OSError:
            return None, False
    return [sibling.rfilename for sibling in info.siblings or []], True


def _remote_headers(repo_id: str, revision: str | None) -> dict[str, dict[str, Any]]:
    """Every weight file's header read from the Hub without its weights, or {} when the
    Hub cannot give them (the planner then estimates from config.json)."""
    from huggingface_hub import get_safetensors_metadata
    from huggingface_hub.errors import NotASafetensorsRepoError, SafetensorsParsingError

    try:
        found = get_safetensors_metadata(repo_id, revision=revision)
    # Connection and HTTP errors are OSErrors (requests' and huggingface_hub's).
    except (OSError, ValueError, NotASafetensorsRepoError, SafetensorsParsingError):
        return {}
    return {
        name: {
            tensor: {"dtype": info.dtype, "shape": list(info.shape)}
            for tensor, info in metadata.tensors.items()
        }
        for name, metadata in found.files_metadata.items()
    }


def fetch_planning_files(metadata: ModelMetadata) -> None:
    """Download the small files the families inspect (tokenizer and processor settings,
    sentence-transformers modules) into the snapshot: for a model that passed the fit
    check. Offline, or for a local folder, the files are what they are."""
    resolved = metadata.resolved
    if resolved.repo_id is None or not metadata.online:
        return
    _snapshot(
        resolved.repo_id,
        resolved.revision,
        allow_patterns=list(_PLANNING_FILES),
        ignore_patterns=list(_ALWAYS_IGNORED),
    )


def check_metadata_safety(
    metadata: ModelMetadata,
    config: dict[str, Any],
    *,
    trust_remote_code: bool,
    allow_pickle: bool,
) -> None:
    """`resolve`'s safety rules from the file list: no remote code without consent, no
    pickle-only weights without consent, and some weights at all."""
    resolved = metadata.resolved
    if resolved.repo_id is not None and not allow_pickle and not metadata.has_safetensors:
        _refuse_pickle_only(resolved.repo_id)
    if config.get("auto_map") and not trust_remote_code:
        raise SecurityError(
            "this model needs custom code from its repository (config.json auto_map); "
            "review it, then pass --trust-remote-code"
        )
    if not metadata.has_safetensors and metadata.has_pickle and not allow_pickle:
        _refuse_pickle_only(str(resolved.local_path))
    if not metadata.has_safetensors and not metadata.has_pickle:
        raise ModelNotFoundError(f"{resolved.local_path} holds no model weights (*.safetensors)")

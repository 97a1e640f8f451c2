"""Turn texts into model inputs with the `tokenizers` library, exactly as the runner will.

Validation, calibration and the on-device runner all tokenise through tokenizer.json
with the same padding and truncation, so what was validated is what runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeport.errors import UnsupportedError

if TYPE_CHECKING:
    from edgeport.backends import Feeds
    from edgeport.schemas import ModelInfo

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "vocab.json",
    "added_tokens.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
)


def prepare_tokenizer(model: ModelInfo, workdir: Path, *, trust_remote_code: bool) -> Path:
    """A folder holding tokenizer.json (converted from a slow tokenizer when needed)."""
    if (model.local_path / "tokenizer.json").is_file():
        return model.local_path
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(  # type: ignore[no-untyped-call]
            str(model.local_path), use_fast=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise UnsupportedError(f"cannot load a tokenizer for this model: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedError("this model's tokenizer has no fast (tokenizer.json) version")
    out = workdir / "tokenizer"
    tokenizer.save_pretrained(str(out))
    return out


def tokenizer_files(folder: Path) -> list[Path]:
    return [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]


def pad_token_id(folder: Path, tokenizer: Any = None) -> int:
    """The pad token's id from tokenizer_config.json (0 when it names none)."""
    if tokenizer is None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        from edgeport.hub import read_json_file

        config = read_json_file(config_path)
        pad = config.get("pad_token") if isinstance(config, dict) else None
        if isinstance(pad, dict):
            pad = pad.get("content")
        if isinstance(pad, str) and tokenizer.token_to_id(pad) is not None:
            return int(tokenizer.token_to_id(pad))
    return 0


class TextEncoder:
    def __init__(self, tokenizer_dir: Path, max_length: int, input_names: Sequence[str]) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer.enable_padding(pad_id=pad_token_id(tokenizer_dir, self._tokenizer))
        self.input_names = tuple(input_names)

    def encode(self, texts: Sequence[str]) -> Feeds:
        import numpy as np

        encodings = self._tokenizer.encode_batch(list(texts))
        feeds: Feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        return feeds

    def batches(self, texts: Sequence[str], batch_size: int) -> list[Feeds]:
        return [self.encode(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]


def right_pad(items: Sequence[Feeds]) -> list[Feeds]:
    """Each input right-padded with zeros to the widest one's length; the attention mask
    marks the padding, so the model's outputs at real tokens do not change."""
    import numpy as np

    width = max((int(feeds["attention_mask"].shape[-1]) for feeds in items), default=0)
    return [
        {
            name: np.pad(values, [(0, 0), (0, width - values.shape[-1])])
            for name, values in feeds.items()
        }
        for feeds in items
    ]


def padded_batch(items: Sequence[Feeds], size: int = 8) -> Feeds | None:
    """Up to `size` inputs right-padded into one batch (the padding masked out)."""
    import numpy as np

    padded = right_pad([feeds for feeds in items if "attention_mask" in feeds][:size])
    if not padded:
        return None
    return {name: np.concatenate([feeds[name] for feeds in padded]) for name in padded[0]}


class TokenizedText:
    """What every family whose inputs are token ids shares: the tokenizer folder, the
    files shipped beside the model, the device's tokenizer package, and the runtime
    fields run.py tokenises with. Text families derive from it."""

    def prepare_processor(
        self, model: ModelInfo, workdir: Path, *, trust_remote_code: bool
    ) -> Path:
        return prepare_tokenizer(model, workdir, trust_remote_code=trust_remote_code)

    def processor_files(self, folder: Path) -> list[Path]:
        return tokenizer_files(folder)

    def device_packages(self, runner: str) -> list[str]:
        # openvino_tokenizer.xml on OpenVINO, tokenizer.json elsewhere.
        return ["openvino-tokenizers"] if runner == "openvino" else ["tokenizers"]

    def tokenizer_fields(self, model: ModelInfo, processor_dir: Path) -> dict[str, Any]:
        return {"max_length": model.max_length, "pad_token_id": pad_token_id(processor_dir)}

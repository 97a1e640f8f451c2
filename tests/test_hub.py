from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import MINILM, needs_minilm

from edgeport.errors import BadInputError, ModelNotFoundError, SecurityError
from edgeport.hub import resolve


@needs_minilm
def test_hub_id_resolves_from_cache_with_commit() -> None:
    resolved = resolve(MINILM)
    assert resolved.commit == "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
    assert (resolved.local_path / "model.safetensors").is_file()


@needs_minilm
def test_revision_missing_from_offline_cache() -> None:
    with pytest.raises(ModelNotFoundError, match="revision 'v9'"):
        resolve(MINILM, revision="v9")


def test_local_folder(tiny_bert: Path) -> None:
    resolved = resolve(str(tiny_bert))
    assert resolved.local_path == tiny_bert.resolve()
    assert resolved.commit is None


def test_revision_with_folder_is_rejected(tiny_bert: Path) -> None:
    with pytest.raises(BadInputError, match="--revision"):
        resolve(str(tiny_bert), revision="main")


def test_remote_code_needs_consent(tiny_bert: Path, tmp_path: Path) -> None:
    model = tmp_path / "custom"
    shutil.copytree(tiny_bert, model)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(SecurityError, match="--trust-remote-code"):
        resolve(str(model))
    assert resolve(str(model), trust_remote_code=True).local_path == model.resolve()


def test_pickle_only_weights_need_consent(tiny_bert: Path, tmp_path: Path) -> None:
    model = tmp_path / "pickled"
    shutil.copytree(tiny_bert, model)
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(SecurityError, match="--allow-pickle"):
        resolve(str(model))
    assert resolve(str(model), allow_pickle=True).local_path == model.resolve()


def test_malformed_hub_id() -> None:
    with pytest.raises(BadInputError):
        resolve("not a model id!")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe{}", "not UTF-8 text (byte 0, line 1)"),
        (b'{"model_type": ', "malformed JSON: Expecting value (line 1)"),
        (b'"just a string"', "expected a JSON object"),
    ],
)
def test_a_malformed_config_is_bad_input_naming_it(
    tiny_bert: Path, tmp_path: Path, content: bytes, expected: str
) -> None:
    model = tmp_path / "broken"
    shutil.copytree(tiny_bert, model)
    (model / "config.json").write_bytes(content)
    with pytest.raises(BadInputError) as caught:
        resolve(str(model))
    assert str(caught.value).startswith(f"{model.resolve() / 'config.json'}: {expected}")


def test_a_long_hub_id_is_cut_in_the_message() -> None:
    with pytest.raises(BadInputError) as caught:
        resolve("not a model id!" * 1000)
    assert len(str(caught.value)) < 200

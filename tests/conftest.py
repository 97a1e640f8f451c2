"""Shared fixtures: tiny models built from configs, and a private copy of the Hub cache.

huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE when it is imported, so both are
set here, before any test imports it: tests never touch the network, and Hub ids
resolve from a throw-away copy of ../shared/hf-cache exactly as for a user with a warm
cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SOURCE_CACHE = Path(os.environ.get("EDGEPORT_TEST_HF_CACHE", SHARED / "hf-cache"))
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TINY_LLAMA = SHARED / "models" / "tiny-llama-pydoc"

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="edgeport-tests-"))
TEST_CACHE = _SESSION_TMP / "hf-cache"
if SOURCE_CACHE.is_dir():
    shutil.copytree(SOURCE_CACHE, TEST_CACHE, symlinks=True)
else:
    TEST_CACHE.mkdir(parents=True)
os.environ["HF_HUB_CACHE"] = str(TEST_CACHE)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("EDGEPORT_DEBUG", None)

needs_minilm = pytest.mark.skipif(
    not (TEST_CACHE / "models--sentence-transformers--all-MiniLM-L6-v2").is_dir(),
    reason=f"the real MiniLM is not in {SOURCE_CACHE}",
)

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Edge devices run small models with little memory.",
    "Quantisation trades a little accuracy for speed.",
    "Hello world, this is a tiny tokenizer for tests.",
    "Prices like $19.99 and log lines like ERROR timeout appear too.",
]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


def _tiny_tokenizer(folder: Path) -> int:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    tokenizer.train_from_iterator(TRAINING_TEXT * 4, trainer)
    tokenizer.post_processor = processors.BertProcessing(
        ("[SEP]", tokenizer.token_to_id("[SEP]")), ("[CLS]", tokenizer.token_to_id("[CLS]"))
    )
    fast = BertTokenizerFast(tokenizer_object=tokenizer, model_max_length=128)
    fast.save_pretrained(str(folder))
    return int(tokenizer.get_vocab_size())


def build_tiny_bert(folder: Path, head: str = "base", seed: int = 0) -> Path:
    """A random 2-layer BERT (with a real tokenizer) saved as safetensors."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _tiny_tokenizer(folder)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    if head == "classification":
        config.id2label = {0: "negative", 1: "positive"}
        config.label2id = {"negative": 0, "positive": 1}
        model = BertForSequenceClassification(config)
    else:
        model = BertModel(config)
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_bert_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(
        tmp_path_factory.mktemp("models") / "tiny-bert-cls", head="classification"
    )


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `edgeport` as a user would, in a child process (exit codes included)."""
    return subprocess.run(
        [sys.executable, "-m", "edgeport", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
        timeout=1800,
    )


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli


def build_tiny_decoder(
    folder: Path, model_type: str = "llama", seed: int = 0, *, tied: bool = False
) -> Path:
    """A random 2-layer decoder-only LM with the real 4096-token tokenizer of tiny-llama-pydoc;
    `tied`: its lm_head is the token embedding matrix, as in SmolLM2 and Qwen2."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(TINY_LLAMA / name, folder / name)
    common = {"vocab_size": 4096, "bos_token_id": 1, "eos_token_id": 2}
    if model_type == "gpt2":
        config = AutoConfig.for_model(
            "gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=256, **common
        )
    else:
        config = AutoConfig.for_model(
            model_type,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=tied,
            **common,
        )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(folder))
    return folder


needs_tiny_llama = pytest.mark.skipif(
    not (TINY_LLAMA / "tokenizer.json").is_file(), reason=f"{TINY_LLAMA} is absent"
)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (TINY_LLAMA / "tokenizer.json").is_file():
        pytest.skip(f"{TINY_LLAMA} is absent")
    return build_tiny_decoder(tmp_path_factory.mktemp("models") / "tiny-llama")


def build_tiny_two_tower(folder: Path, model_type: str = "clip", seed: int = 0) -> Path:
    """A random CLIP or SigLIP (image tower, text tower) with a word-level fast tokenizer,
    for shape and plumbing tests: zero-shot quality needs examples/vision/tiny-clip."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w.strip(".,").lower() for line in TRAINING_TEXT for w in line.split()})
    words += ["this", "is", "photo", "of", "cat", "dog", "rocket", "coffee", "astronaut"]
    specials = ["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys([*specials, *words]))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)],
    )
    pad = eos if model_type == "clip" else vocab["<pad>"]
    max_positions = 16
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>" if model_type == "clip" else "<pad>",
        unk_token="<unk>",
        model_max_length=max_positions,
        model_input_names=["input_ids", "attention_mask"],
    ).save_pretrained(str(folder))
    text = dict(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=max_positions, bos_token_id=bos,
        eos_token_id=eos, pad_token_id=pad, projection_dim=16,
    )  # fmt: skip
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(seed)
    if model_type == "clip":
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
        processor = CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )
    else:
        from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        with torch.no_grad():  # random init leaves both at 0: the formula needs them
            model.logit_scale.fill_(2.3)
            model.logit_bias.fill_(-1.5)
        processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


def build_for_two_profiles(model: Path, name: str, out: Path) -> list[dict[str, str]]:
    """`edgeport build` of `model` (onnx-fp32) for x86-64-avx2 and raspberry-pi-5, in
    process; asserts both pairs were verified and archived, and returns the sha256 of
    every file of each bundle, by path."""
    import json
    import warnings

    from edgeport.build import BuildFile, ModelEntry, run_build

    build = BuildFile(
        models=[ModelEntry(id=str(model), recipes=["onnx-fp32"], name=name)],
        profiles=["x86-64-avx2", "raspberry-pi-5"],
        out=out,
    )
    with warnings.catch_warnings():  # torch's tracer warns during export, in-process here
        warnings.simplefilter("ignore")
        records, _ = run_build(build)
    assert [r["exit_code"] for r in records] == [0, 0], records
    assert all(r["verify"] == "passed" and Path(r["archive"]).is_file() for r in records)
    manifests = [json.loads((Path(r["bundle"]) / "manifest.json").read_text()) for r in records]
    return [{f["path"]: f["sha256"] for f in m["files"]} for m in manifests]

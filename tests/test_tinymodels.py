"""The tiny test models themselves: every other test relies on them."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

ORDINARY_ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the weather like today? It's sunny, warm and bright!",
    "Greenroom deploys Embedding Models without dropping requests (version 2, 2024).",
]


def test_tiny_models_ship_what_loaders_need(tiny_models: dict[str, Path]) -> None:
    assert set(tiny_models) == {"tiny-1", "tiny-2", "tiny-3"}
    for path in tiny_models.values():
        for name in (
            "config.json",
            "modules.json",
            "sentence_bert_config.json",
            "1_Pooling/config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt",
        ):
            assert (path / name).is_file(), f"{path.name} lacks {name}"


def test_tiny_3_has_another_tokenizer_and_dimension(
    tiny_model_dir: Path, tiny_model_3_dir: Path
) -> None:
    text = ORDINARY_ENGLISH[0]
    one = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json")).encode(text)
    three = Tokenizer.from_file(str(tiny_model_3_dir / "tokenizer.json")).encode(text)
    assert one.tokens == three.tokens and one.ids != three.ids  # same words, other ids
    assert '"hidden_size": 48' in (tiny_model_3_dir / "config.json").read_text()


def test_tiny_models_share_one_tokenizer(tiny_model_dir: Path, tiny_model_2_dir: Path) -> None:
    assert (tiny_model_dir / "tokenizer.json").read_bytes() == (
        tiny_model_2_dir / "tokenizer.json"
    ).read_bytes()
    assert (tiny_model_dir / "model.safetensors").read_bytes() != (
        tiny_model_2_dir / "model.safetensors"
    ).read_bytes()


def test_ordinary_english_tokenizes_without_unknown_tokens(tiny_model_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    assert tokenizer.token_to_id("[PAD]") == 0
    for text in ORDINARY_ENGLISH:
        encoding = tokenizer.encode(text)
        assert encoding.tokens[0] == "[CLS]" and encoding.tokens[-1] == "[SEP]"
        assert "[UNK]" not in encoding.tokens, encoding.tokens
        assert len(encoding.ids) < 64

"""The cut of long strings (serving.tokenizing): the ids of adversarial strings equal the uncut
strings' ids, on the tiny models' tokenizer and on the default model's, and what the tokenizer
sees of them is small."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from greenroom.serving.tokenizing import cut_rule, encode_texts, load_tokenizer

SIZE = 256 * 1024  # the floods: 2 MiB
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "while", "it", "rains"]
# Characters chosen to break a careless cut: control characters BERT deletes (VT, FF, NEL, NUL,
# U+FFFD) next to white space it keeps, combining marks, CJK, added tokens and pieces of them,
# punctuation and runs around the WordPiece limit of 100 characters.
TRICKY = [
    *WORDS, " ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x85", "\x00", "\x01", "\x1c",
    "\ufffd", "\u00a0", "\u3000", "\u2028", "\u1680", "\u200b", "\u0301", "\u0338", "=", ".",
    "...", "[SEP]", "[CLS]", "[MASK", "SEP]", "[", "]", "\u4e00", "\u3042", "É", "İ", "ﬁ", "½",
    "1", "23", "x" * 99, "y" * 100, "z" * 101, "a" * 300, "B7" * 90,
]  # fmt: skip


def adversarial(size: int) -> dict[str, str]:
    """Strings of about `size` characters; the floods of characters that cost little to
    tokenise uncut (blanks, deleted control characters) are eight times longer."""
    words = " ".join(random.Random(size).choice(WORDS) for _ in range(size // 5))
    flood = 8 * size
    return {
        "words": words[:size],
        "blanks then words": " " * flood + words[:4000],
        "words, blanks, words": words[:3000] + "\n\t " * (flood // 3) + words[:4000],
        "control characters": "\x01" * flood + " tail" * 500,
        "control characters inside words": "ab\x01cd\x0b" * (size // 6),
        "one giant word": "a" * size,
        "one giant word between added tokens": "[CLS]" + "b" * size + "[SEP] after" * 300,
        "combining marks on every letter": "e\u0301\u0327 " * (size // 4),
        "one letter, then marks": "a" + "\u0301" * size + " tail" * 500,
        "ideographs": "\u4e00\u4e8c\u4e09" * (size // 3),
        "punctuation": "a." * (size // 2),
        "added tokens": "[SEP] [MASK]" * (size // 12),
    }


# Seen whole: characters the tokenizer deletes, which no separator can follow.
SEEN_WHOLE = {"control characters", "control characters inside words", "one letter, then marks"}


@pytest.fixture(scope="module", params=["tiny", "default"])
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    """The router's tokenizer of a tiny model (max length 64) and of all-MiniLM-L6-v2 (256)."""
    if request.param == "tiny":
        return load_tokenizer(request.getfixturevalue("tiny_model_dir") / "tokenizer.json", 64)
    return load_tokenizer(request.getfixturevalue("default_model_dir") / "tokenizer.json", 256)


class Watching:
    """The tokenizer, recording how many characters it was given."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.seen = 0

    def encode_batch_fast(self, inputs: list[str]) -> list[Any]:
        self.seen += sum(map(len, inputs))
        return self.tokenizer.encode_batch_fast(inputs)

    def to_str(self) -> str:
        return self.tokenizer.to_str()


def mixture(rng: random.Random, pieces: int) -> str:
    return "".join(rng.choice(TRICKY) for _ in range(pieces))


def uncut(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode_batch_fast([text])[0].ids


def test_both_tokenizers_are_covered_by_the_proof(tokenizer: Tokenizer) -> None:
    rule = cut_rule(tokenizer)
    assert rule is not None and rule.long_run is not None
    assert rule.max_length == tokenizer.truncation["max_length"]


@pytest.mark.parametrize("case", sorted(adversarial(1)))
def test_adversarial_megabytes_give_the_uncut_ids_from_a_small_part(
    tokenizer: Tokenizer, case: str
) -> None:
    text = adversarial(SIZE)[case]
    watching = Watching(tokenizer)
    (ids,) = encode_texts(watching, [text], rule=cut_rule(tokenizer))
    assert ids == uncut(tokenizer, text)
    if case not in SEEN_WHOLE:
        assert watching.seen < 64 * 1024  # what the tokenizer saw of it


def test_random_mixtures_of_tricky_characters(tokenizer: Tokenizer) -> None:
    rng = random.Random(9)
    rule = cut_rule(tokenizer)
    texts = [mixture(rng, rng.choice([50, 400, 3000])) for _ in range(100)]
    assert encode_texts(tokenizer, texts, rule=rule) == [uncut(tokenizer, t) for t in texts]


def test_compacting_keeps_every_token(tokenizer: Tokenizer) -> None:
    """Not only the first max-length ones: shortened blanks and long runs change no token."""
    rule = cut_rule(tokenizer)
    assert rule is not None
    whole = Tokenizer.from_str(tokenizer.to_str())
    whole.no_truncation()
    rng = random.Random(3)
    for _ in range(300):
        text = mixture(rng, rng.choice([3, 20, 80]))
        assert whole.encode(rule.compact(text)).ids == whole.encode(text).ids, repr(text)


def test_short_strings_are_never_cut(tokenizer: Tokenizer) -> None:
    watching = Watching(tokenizer)
    texts = ["hello world", "a" * 500, "x " * 200]
    assert encode_texts(watching, texts, rule=cut_rule(tokenizer)) == [
        uncut(tokenizer, t) for t in texts
    ]
    assert watching.seen == sum(map(len, texts))


def test_tokenizers_outside_the_proof_are_never_cut() -> None:
    byte_level = Tokenizer(models.BPE())
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel()
    byte_level.enable_truncation(16)
    assert cut_rule(byte_level) is None  # its pieces keep their white space
    untruncated = Tokenizer(models.WordPiece({"[UNK]": 0}, unk_token="[UNK]"))
    untruncated.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    assert cut_rule(untruncated) is None
    untruncated.enable_truncation(16)
    assert cut_rule(untruncated) is not None
    untruncated.add_tokens(["two words"])  # an added token with white space in it
    assert cut_rule(untruncated) is None


def test_an_added_word_turns_the_long_run_rewrite_off(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir / "tokenizer.json", 64)
    tokenizer.add_tokens(["aaaa"])
    rule = cut_rule(tokenizer)
    assert rule is not None and rule.long_run is None
    text = "a" * 5000 + " end"
    assert encode_texts(tokenizer, [text], rule=rule) == [uncut(tokenizer, text)]

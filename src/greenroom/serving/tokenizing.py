"""Tokenising request strings without tokenising what truncation would drop.

A string is truncated to the model's max sequence length L (tokens, specials included), yet a
tokenizer normalises and splits all of it first: megabytes cost seconds. So `encode_texts` hands
the tokenizer a prefix of each long string, cut where it provably keeps the first L tokens.

**Separators.** `cut_rule` accepts a tokenizer built only from components for which the proof
below holds (`SAFE_NORMALIZERS`, `SAFE_PRE_TOKENIZERS`, truncation on the right, no padding) and
names the characters c at which it may cut (position i of s is a separator when s[i] is one):

- white space that every safe normaliser keeps as white space (`SPACES`; not VT, FF or NEL:
  BERT's `clean_text` deletes those control characters);
- with BERT's normaliser first and `handle_chinese_chars` on, the CJK ideographs it pads with
  spaces (`CJK`);
- with BERT's pre-tokeniser alone, ASCII punctuation, which it isolates;

and never a character that occurs in an added token (`[CLS]` rules out `[` and `]`).

**The proof.** For a separator i, the tokens of s before truncation are those of s[:i] followed by
those of s[i:], because each stage keeps that split:

1. added tokens are matched first; none contains s[i], so no match covers i, and the matches
   left of i are those of s[:i];
2. the safe normalisers map each character on its own (NFD and NFKD also reorder combining
   marks, but only inside a run of them, which s[i], a starter, ends), and s[i] to white space,
   to white space around the ideograph, or to the punctuation itself;
3. the safe pre-tokenisers split at white space and drop it (BertPreTokenizer, Whitespace,
   WhitespaceSplit; one of them is required) and BERT's isolates ASCII punctuation; the others
   (Punctuation, Digits) only split pieces further: no piece spans i;
4. the model tokenises each piece on its own.

Truncation keeps the first L − (specials) tokens and the post-processor adds the specials. So when
the encoding of s[:i] is L tokens long (its own truncation cut it, or it fits exactly), its tokens
are s's first ones: encode(s[:i]) == encode(s), and the vectors are the same.

**Compacting.** Two rewrites keep a whole string's ids, and run (once) before a string whose first
prefix fell short, or that has no separator past it, is tokenised further:

- a white-space separator followed by another contributes nothing (by the same stages), so each
  run of `SPACES` becomes its first character: megabytes of blanks cost one regex pass;
- with WordPiece, a piece longer than `max_input_chars_per_word` is one `[UNK]` whatever its
  letters. A maximal run R of ASCII letters and digits (letters only with the Digits
  pre-tokeniser) never splits and maps letter for letter; an added token lies inside R only if
  it is such a run itself (then this rewrite is off), and one that overlaps R's start or end
  reaches at most its length A into it. So R is kept as its first `max chars + 2A + 1` and last
  A characters: the matches at both ends are unchanged, and the piece through R's middle stays
  longer than the limit, one `[UNK]`, before and after. One giant word costs one regex pass.

**The search.** The first prefix tried ends at the first separator at or after `WINDOW_PER_TOKEN`
× L characters; while its encoding falls short of L tokens, the next ends at the first separator
at or after twice the last cut. A string with no separator left is encoded whole (compacted).
Each round tokenises at most twice the last prefix: ordinary text costs one prefix of a few
kilobytes, and no string more than about twice its whole encoding.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from tokenizers import Tokenizer

SPACES = "\t\n\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
SPACE_RUN = re.compile(f"([{SPACES}])[{SPACES}]+")
# BERT's `is_chinese_char` ranges: `handle_chinese_chars` surrounds each with spaces.
CJK = (
    "\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002b73f"
    "\U0002b740-\U0002b81f\U0002b920-\U0002ceaf\U0002f800-\U0002fa1f"
)
CJK_CHAR = re.compile(f"[{CJK}]")
# Unicode White_Space: no added token may contain any of it.
WHITE_SPACE = re.compile("[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
SAFE_NORMALIZERS = frozenset({"BertNormalizer", "Lowercase", "NFD", "NFKD", "StripAccents"})
SPLITTING_PRE_TOKENIZERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})
SAFE_PRE_TOKENIZERS = SPLITTING_PRE_TOKENIZERS | {"Punctuation", "Digits"}
WINDOW_PER_TOKEN = 8  # characters per token of the first prefix tried (English has 4 to 5)


def load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    """A model's tokenizer as the router uses it: no padding, truncated to `max_length`."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer


class BatchTokenizer(Protocol):
    """The part of `tokenizers.Tokenizer` used here (tests stand in for it)."""

    def encode_batch_fast(self, inputs: list[str]) -> list[Any]: ...

    def to_str(self) -> str: ...


@dataclass(frozen=True)
class CutRule:
    """Where a tokenizer's texts may be cut (at `separator`, keeping `max_length` tokens) and
    how they may be compacted first (`long_run`: runs kept as `head` + `tail` characters)."""

    max_length: int
    separator: re.Pattern[str]
    long_run: re.Pattern[str] | None = None
    head: int = 0
    tail: int = 0

    def compact(self, text: str) -> str:
        text = SPACE_RUN.sub(r"\1", text)
        if self.long_run is not None:
            text = self.long_run.sub(lambda run: run[0][: self.head] + run[0][-self.tail :], text)
        return text


def cut_rule(tokenizer: BatchTokenizer) -> CutRule | None:
    """How the tokenizer's texts may be cut; None when the proof does not cover it."""
    config = json.loads(tokenizer.to_str())
    truncation = config.get("truncation") or {}
    normalizers = _components(config.get("normalizer"), "normalizers")
    pre_tokenizers = _components(config.get("pre_tokenizer"), "pretokenizers")
    added = "".join(token.get("content", "") for token in config.get("added_tokens") or [])
    safe = (
        truncation.get("direction") == "Right"
        and config.get("padding") is None
        and all(component["type"] in SAFE_NORMALIZERS for component in normalizers)
        and all(component["type"] in SAFE_PRE_TOKENIZERS for component in pre_tokenizers)
        and any(component["type"] in SPLITTING_PRE_TOKENIZERS for component in pre_tokenizers)
        and not WHITE_SPACE.search(added)
    )
    if not safe:
        return None
    separators = SPACES
    first = normalizers[0] if normalizers else {}
    pads_cjk = first.get("type") == "BertNormalizer" and first.get("handle_chinese_chars")
    if pads_cjk and not CJK_CHAR.search(added):
        separators += CJK
    if [component["type"] for component in pre_tokenizers] == ["BertPreTokenizer"]:
        separators += re.escape("".join(sorted(set(string.punctuation) - set(added))))
    rule = CutRule(int(truncation["max_length"]), re.compile(f"[{separators}]"))
    return _with_long_runs(rule, config, pre_tokenizers)


def _with_long_runs(
    rule: CutRule, config: dict[str, Any], pre_tokenizers: list[dict[str, Any]]
) -> CutRule:
    """The rule with WordPiece's long runs shortened, where the proof covers them."""
    model = config.get("model") or {}
    if model.get("type") != "WordPiece":
        return rule
    digits = any(component["type"] == "Digits" for component in pre_tokenizers)
    run_class = "A-Za-z" if digits else "A-Za-z0-9"
    contents = [token.get("content", "") for token in config.get("added_tokens") or []]
    if any(re.fullmatch(f"[{run_class}]+", content) for content in contents):
        return rule
    reach = max((len(content) for content in contents), default=0)
    head = int(model.get("max_input_chars_per_word", 100)) + 2 * reach + 1
    long_run = re.compile(f"[{run_class}]{{{head + reach + 1},}}")
    return replace(rule, long_run=long_run, head=head, tail=max(reach, 1))


def _components(component: dict[str, Any] | None, children: str) -> list[dict[str, Any]]:
    """A normaliser's or pre-tokeniser's parts, a `Sequence` flattened."""
    if component is None:
        return []
    if component.get("type") == "Sequence":
        parts = component.get(children) or []
        return [part for child in parts for part in _components(child, children)]
    return [component]


def encode_texts(
    tokenizer: BatchTokenizer, texts: Sequence[str], *, rule: CutRule | None
) -> list[list[int]]:
    """The token ids of each text, as the tokenizer gives them; with the tokenizer's `rule`,
    long texts are tokenised from a prefix that provably gives the same ids."""
    if rule is None:
        return [e.ids for e in tokenizer.encode_batch_fast(list(texts))]
    results: list[list[int]] = [[] for _ in texts]
    todo = list(texts)
    compacted: set[int] = set()

    def candidate(index: int, length: int) -> tuple[str, int | None]:
        prefix, cut_at = _prefix(todo[index], length, rule)
        if len(prefix) > 2 * length and index not in compacted:
            compacted.add(index)  # a long stretch without a separator: compact it first
            todo[index] = rule.compact(todo[index])
            prefix, cut_at = _prefix(todo[index], length, rule)
        return prefix, cut_at

    pending = {index: WINDOW_PER_TOKEN * rule.max_length for index in range(len(texts))}
    while pending:
        tried = {index: candidate(index, length) for index, length in pending.items()}
        encodings = tokenizer.encode_batch_fast([prefix for prefix, _ in tried.values()])
        pending = {}
        for (index, (_, cut_at)), encoding in zip(tried.items(), encodings, strict=True):
            if cut_at is None or len(encoding.ids) >= rule.max_length:
                results[index] = encoding.ids
                continue
            if index not in compacted:  # short of tokens: compact once
                compacted.add(index)
                todo[index] = rule.compact(todo[index])
            pending[index] = 2 * cut_at
    return results


def _prefix(text: str, length: int, rule: CutRule) -> tuple[str, int | None]:
    """`text` cut at its first separator at or after `length`, and where; or the whole text and
    None when it is not longer or has no separator there."""
    if len(text) <= length:
        return text, None
    found = rule.separator.search(text, length)
    if found is None:
        return text, None
    return text[: found.start()], found.start()

"""A retrieval corpus that needs no download: the running interpreter's standard library.

Every module, package, class, function and method (not the interpreter's own `test` suite, not a
name starting with `_` inside a module; private modules such as `_pydecimal` count: they hold the
pure-Python documentation of C modules) with a docstring of at least two
sentences gives one pair: the **query** is the docstring's first sentence (what a user asks for),
the **document** is the rest (what the index holds). Sources are read with `ast`, never imported,
so no module runs (no `antigravity`, no `this`), and the result depends only on the interpreter's
files: the same interpreter always builds the same corpus.

Of the pairs, a hash-chosen half are **evaluation** pairs (their queries are asked, every document
is in the index); the other half is **held apart**: its queries join the adapter's training
texts. Training texts are the documents' sentences plus the held-apart queries, never an
evaluation query (a training text equal to one is dropped).

    .venv/bin/python bench/corpus.py            # counts and a few pairs
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import inspect
import re
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PAIRS = 2000
SALT = "greenroom-migration-corpus-1"
MIN_WORDS = 5  # in a query, and in a sentence that counts for the document
MAX_QUERY_WORDS = 40
MIN_SENTENCE_WORDS = 4
MAX_DOCUMENT_CHARS = 1200  # long documents are cut at a sentence end (the models truncate anyway)
MAX_SOURCE_BYTES = 2_000_000
SKIPPED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "_bundled"}
)
ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "resp.", "Mr.", "Dr.")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`'\"(])")
_NOT_PROSE = re.compile(r"^\s*(>>>|\.\.\.|[-*+] |\d+[.)] |:|\.\. |[A-Za-z_]+ *:\s*$|[=~^-]{3,})")


@dataclass(frozen=True)
class Pair:
    name: str  # the documented object's dotted name
    query: str
    document: str
    sentences: tuple[str, ...]  # the document's sentences


@dataclass(frozen=True)
class Corpus:
    pairs: tuple[Pair, ...]
    evaluation: tuple[int, ...]  # indexes into pairs whose queries are asked
    held_apart: tuple[int, ...]  # indexes whose queries may train an adapter
    training_texts: tuple[str, ...]

    @property
    def documents(self) -> list[str]:
        return [pair.document for pair in self.pairs]

    @property
    def evaluation_queries(self) -> list[str]:
        return [self.pairs[i].query for i in self.evaluation]

    @property
    def held_apart_queries(self) -> list[str]:
        return [self.pairs[i].query for i in self.held_apart]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for pair in self.pairs:
            digest.update(f"{pair.query}\0{pair.document}\0".encode())
        for text in self.training_texts:
            digest.update(text.encode() + b"\1")
        return digest.hexdigest()[:16]


def _rank(key: str) -> str:
    return hashlib.sha256(f"{SALT}\0{key}".encode()).hexdigest()


def stdlib_files(root: Path | None = None) -> list[tuple[str, Path]]:
    """(dotted module name, file) of every public pure-Python stdlib module, sorted."""
    root = root or Path(sysconfig.get_path("stdlib"))
    found = []
    for file in sorted(root.rglob("*.py")):
        relative = file.relative_to(root)
        parts = relative.parts
        if any(part in SKIPPED_DIRS for part in parts[:-1]):
            continue
        names = [*parts[:-1], relative.stem]
        if names[-1] == "__init__":
            names = names[:-1]
        if not names or any(not n.isidentifier() or n.startswith("__") for n in names):
            continue
        if names[0] == "test":
            continue  # the interpreter's own test suite documents tests, not the library
        found.append((".".join(names), file))
    return found


def documented(module: str, file: Path) -> Iterator[tuple[str, str]]:
    """(dotted name, docstring) of the module and of its public classes, functions, methods."""
    try:
        if file.stat().st_size > MAX_SOURCE_BYTES:
            return
        tree = ast.parse(file.read_bytes(), filename=str(file))
    except (SyntaxError, ValueError, OSError):
        return
    if doc := ast.get_docstring(tree, clean=True):
        yield module, doc
    yield from _members(module, tree.body)


def _members(prefix: str, body: list[ast.stmt]) -> Iterator[tuple[str, str]]:
    for node in body:
        if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if node.name.startswith("_"):
            continue
        name = f"{prefix}.{node.name}"
        if doc := ast.get_docstring(node, clean=True):
            yield name, doc
        if isinstance(node, ast.ClassDef):
            yield from _members(name, node.body)


def prose_sentences(doc: str) -> list[str]:
    """The docstring's prose as sentences: stops at the first doctest, skips lists, fields,
    headings and code paragraphs; whitespace collapsed."""
    kept = []
    for paragraph in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        lines = paragraph.splitlines()
        if any(line.lstrip().startswith(">>>") for line in lines):
            if not kept:
                kept.append(" ".join(line for line in lines if not _NOT_PROSE.match(line)))
            break
        if any(_NOT_PROSE.match(line) for line in lines) or lines[0].startswith("    "):
            continue
        kept.append(" ".join(line.strip() for line in lines))
    text = re.sub(r"\s+", " ", " ".join(kept)).strip()
    pieces = [p for p in _SENTENCE_END.split(text) if p]
    sentences: list[str] = []
    for piece in pieces:
        if sentences and sentences[-1].endswith(ABBREVIATIONS):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return sentences


def _words(text: str) -> int:
    return len(text.split())


def _is_prose(sentence: str) -> bool:
    """Mostly letters: drops ASCII-art diagrams and tables that pass as sentences."""
    visible = [c for c in sentence if not c.isspace()]
    return bool(visible) and sum(c.isalpha() for c in visible) >= 0.7 * len(visible)


def _looks_like_query(sentence: str) -> bool:
    return (
        sentence.endswith(".")
        and MIN_WORDS <= _words(sentence) <= MAX_QUERY_WORDS
        and "->" not in sentence
        and _is_prose(sentence)
        and not re.match(r"^[\w.]+\(", sentence)  # a signature line, not a sentence
    )


def pair_of(name: str, doc: str) -> Pair | None:
    sentences = prose_sentences(doc)
    if len(sentences) < 2 or not _looks_like_query(sentences[0]):
        return None
    rest = [s for s in sentences[1:] if _words(s) >= MIN_SENTENCE_WORDS and _is_prose(s)]
    if not rest:
        return None
    kept: list[str] = []
    for sentence in rest:
        if kept and sum(len(s) + 1 for s in kept) + len(sentence) > MAX_DOCUMENT_CHARS:
            break
        kept.append(sentence)
    return Pair(name=name, query=sentences[0], document=" ".join(kept), sentences=tuple(kept))


def candidate_pairs(root: Path | None = None) -> list[Pair]:
    """Every usable pair, with repeated queries and repeated documents dropped altogether (an
    inherited "Return the value." cannot name one document)."""
    pairs = [
        pair
        for module, file in stdlib_files(root)
        for name, doc in documented(module, file)
        if (pair := pair_of(name, doc)) is not None
    ]
    # a copy (the pure-Python twin of a C module documents the same object) is kept once
    distinct = list({(p.query.lower(), p.document.lower()): p for p in reversed(pairs)}.values())
    queries = Counter(p.query.lower() for p in distinct)
    documents = Counter(p.document.lower() for p in distinct)
    return sorted(
        (p for p in distinct if queries[p.query.lower()] == documents[p.document.lower()] == 1),
        key=lambda p: p.name,
    )


def build_corpus(size: int = PAIRS, root: Path | None = None) -> Corpus:
    candidates = sorted(candidate_pairs(root), key=lambda p: _rank(p.name))
    pairs = tuple(sorted(candidates[:size], key=lambda p: p.name))
    order = sorted(range(len(pairs)), key=lambda i: _rank("split\0" + pairs[i].name))
    half = len(order) // 2
    evaluation, held_apart = tuple(sorted(order[:half])), tuple(sorted(order[half:]))
    asked = {pairs[i].query.lower() for i in evaluation}
    texts: list[str] = []
    seen: set[str] = set()
    candidates_texts = [s for p in pairs for s in p.sentences]
    candidates_texts += [pairs[i].query for i in held_apart]
    for text in candidates_texts:
        key = text.lower()
        if key in asked or key in seen:
            continue
        seen.add(key)
        texts.append(text)
    texts.sort(key=lambda t: _rank("text\0" + t))
    return Corpus(
        pairs=pairs, evaluation=evaluation, held_apart=held_apart, training_texts=tuple(texts)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=PAIRS)
    parser.add_argument("--show", type=int, default=3, help="pairs to print")
    args = parser.parse_args(argv)
    corpus = build_corpus(args.pairs)
    queries = set(corpus.held_apart_queries)
    print(f"python {sys.version.split()[0]} stdlib: {len(corpus.pairs)} pairs ", end="")
    print(f"({len(corpus.evaluation)} evaluation, {len(corpus.held_apart)} held apart)")
    print(
        f"training texts: {len(corpus.training_texts)} "
        f"({sum(t in queries for t in corpus.training_texts)} held-apart queries); "
        f"fingerprint {corpus.fingerprint()}"
    )
    for i in corpus.evaluation[: args.show]:
        pair = corpus.pairs[i]
        print(f"\n{pair.name}\n  query: {pair.query}\n  document: {pair.document[:300]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

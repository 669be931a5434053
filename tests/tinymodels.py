"""Build tiny sentence-transformers models offline, in seconds, for the test suite.

    python tests/tinymodels.py OUT_DIR

builds `OUT_DIR/tiny-1` (seed 1), `OUT_DIR/tiny-2` (seed 2: the same tokenizer, other weights) and
`OUT_DIR/tiny-3` (seed 3: hidden size 48 and another tokenizer, its vocabulary in another order,
so the same text has other token ids: the model of an embedding migration), skipping a model
that already exists. Each is a 2-layer BERT with a WordPiece tokenizer over the small vocabulary
below, mean pooling and normalisation, saved in sentence-transformers format. The models embed
into clearly different spaces, which the compatibility-gate tests rely on.

This module imports torch: the test process runs it in a subprocess and never imports it.
"""

from __future__ import annotations

import os
import shutil
import string
import sys
import tempfile
from pathlib import Path

MODEL_SEEDS = {"tiny-1": 1, "tiny-2": 2, "tiny-3": 3}
HIDDEN_SIZE = 32
# tiny-3: another dimension and another tokenizer (the vocabulary reversed after the specials)
HIDDEN_SIZES = {"tiny-3": 48}
REVERSED_VOCAB = frozenset({"tiny-3"})
MAX_SEQ_LENGTH = 64
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PUNCTUATION = list(string.punctuation)
_COMMON_WORDS_TEXT = """
a about above across after again against all almost also always am an and another any are
around as ask at away back be because been before being below best better between big both
but by call came can car care case change child city come could country cut day did different
do does dog done down during each early earth end enough even ever every eye face fact family
far fast father feel few find fire first fish follow food for form found four friend from full
game gave get give go good got great group grow had hand hard has have he head hear help her
here high him his home house how i idea if important in into is it its just keep kind know
land large last late learn leave left less let life light like line little live long look lot
love made make man many may me mean men might mind model more most mother move much must my
name near need never new next night no not now number of off often old on once one only open
or order other our out over own page paper part people picture place plant play point put
question quick quickly read real right river road room run said same saw say school sea second
see sentence set she should show side since small so some something sound still stop story
study such sun take talk tell text than that the their them then there these they thing think
this those thought three through time to together too took tree try turn two under until up
us use very vector walk want was water way we well went were what when where which while white
who why will with without word words work world would write year yes yet you young your
embedding embeddings search query document server fox brown lazy jumps jumped over cat sat mat
hello goodbye today tomorrow yesterday morning evening weather rain sunny cold warm happy sad
"""
COMMON_WORDS = _COMMON_WORDS_TEXT.split()
SUFFIX_PIECES = [
    "##s", "##es", "##ed", "##ing", "##ly", "##er", "##est", "##ment", "##ness", "##tion",
    "##able", "##ful", "##less", "##y", "##al", "##ize", "##ity", "##ous", "##ive",
]  # fmt: skip


def build_vocab(reversed_order: bool = False) -> list[str]:
    """Special tokens first ([PAD] = 0), then single characters, `##` letters, words, suffixes.

    `##` followed by every letter and digit lets WordPiece spell out any lowercase word, so
    ordinary English never becomes [UNK]. `reversed_order` keeps the special tokens first and
    reverses the rest: the same words, other ids.
    """
    chars = list(string.ascii_lowercase) + list(string.digits)
    continuation = [f"##{c}" for c in chars]
    vocab: list[str] = []
    for token in SPECIAL_TOKENS + chars + PUNCTUATION + continuation + COMMON_WORDS + SUFFIX_PIECES:
        if token not in vocab:
            vocab.append(token)
    if reversed_order:
        specials = len(SPECIAL_TOKENS)
        vocab = vocab[:specials] + vocab[specials:][::-1]
    return vocab


def build_tokenizer(reversed_order: bool = False):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {token: index for index, token in enumerate(build_vocab(reversed_order))}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def save_hf_model(
    hf_dir: Path, seed: int, hidden_size: int = HIDDEN_SIZE, reversed_order: bool = False
) -> None:
    """A randomly initialised BERT (seeded) and its tokenizer, in Hugging Face format."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tokenizer = BertTokenizerFast(
        tokenizer_object=build_tokenizer(reversed_order),
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        do_lower_case=True,
        model_max_length=MAX_SEQ_LENGTH,
    )
    config = BertConfig(
        vocab_size=len(build_vocab(reversed_order)),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = BertModel(config)
    model.eval()
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)


def build_model(
    out_dir: Path, seed: int, hidden_size: int = HIDDEN_SIZE, reversed_order: bool = False
) -> None:
    """Build one tiny sentence-transformers model into `out_dir` (atomically: via a temp dir)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-") as scratch:
        hf_dir = Path(scratch) / "hf"
        save_hf_model(hf_dir, seed, hidden_size, reversed_order)
        model = SentenceTransformer(
            modules=[
                Transformer(str(hf_dir), max_seq_length=MAX_SEQ_LENGTH),
                Pooling(hidden_size, "mean"),
                Normalize(),
            ],
            device="cpu",
        )
        staged = Path(scratch) / "model"
        model.save(str(staged))
        # transformers 5 saves tokenizer.json only; slow-tokenizer loaders also want vocab.txt.
        (staged / "vocab.txt").write_text("\n".join(build_vocab(reversed_order)) + "\n")
        try:
            os.replace(staged, out_dir)
        except OSError:
            if not (out_dir / "modules.json").is_file():  # else another builder finished first
                raise


def build_all(out_root: Path) -> dict[str, Path]:
    """Build every tiny model that does not exist yet; returns name → directory."""
    paths = {}
    for name, seed in MODEL_SEEDS.items():
        path = out_root / name
        if not (path / "modules.json").is_file():
            shutil.rmtree(path, ignore_errors=True)
            build_model(path, seed, HIDDEN_SIZES.get(name, HIDDEN_SIZE), name in REVERSED_VOCAB)
        paths[name] = path
    return paths


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name, path in build_all(Path(argv[0])).items():
        print(f"{name} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

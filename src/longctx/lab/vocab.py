"""The lab's word-level tokenizer, built with the `tokenizers` library and saved with every checkpoint.

A token is a word with its leading space (" grass"), a digit (with or without a leading space),
one punctuation mark, or one whitespace character. Decoding concatenates tokens, so a prompt
round-trips exactly and the normal evaluation code (fitting, scoring) runs on lab models as on
real ones. The vocabulary is every word the NIAH generators can emit: the template and noise text
plus the wonderwords lists that keys and word values are drawn from.
"""

from __future__ import annotations

import re
from pathlib import Path

PIECE = r" ?[A-Za-z]+| ?\d| ?[^\sA-Za-z\d]|\s"
SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]


def vocabulary() -> list[str]:
    from ..corpora import load_words
    from ..tasks.niah import NEEDLE, NOISE
    from ..templates import TASK_TEMPLATES, singular_rewrite

    niah = TASK_TEMPLATES["niah"]
    texts = [niah.template, niah.answer_prefix, singular_rewrite(niah.template), singular_rewrite(niah.answer_prefix),
             NOISE, NEEDLE, " numbers number words word uuids uuid", "\n"]
    words = load_words()
    pieces = set()
    for text in texts + list(words.adjectives + words.nouns):
        for p in re.findall(PIECE, text):  # a word may start a line or follow a space or a hyphen
            pieces |= {p, p.lstrip(" "), " " + p.lstrip(" ")} if p.strip() else {p}
    pieces |= {d for i in range(10) for d in (str(i), f" {i}")} | {" ", "\n", "-", " -", ":", ".", ",", "?"}
    return SPECIALS + sorted(pieces - set(SPECIALS))


def build_tokenizer(out: Path):
    """Build, save to `out` and return the lab tokenizer (a transformers fast tokenizer)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = vocabulary()
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE), behavior="isolated")
    tok.decoder = decoders.Fuse()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                                 eos_token="[EOS]", clean_up_tokenization_spaces=False)
    hf.save_pretrained(str(out))
    return hf

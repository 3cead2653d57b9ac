"""Sentence -> word ids, exactly as the original CNM datasets do it.

Tokens come from nltk's word tokenizer (``preserve_line=True``, which needs no downloaded data),
are lower-cased, and only words of the kept vocabulary survive: the ``cap`` most common words of
the GloVe counter, numbered 1..N in that order (0 is padding). At most ``max_num_words`` are kept.
"""
from __future__ import annotations

import pickle
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from nltk.tokenize import word_tokenize
from nltk.tokenize.destructive import NLTKWordTokenizer

from cnm_runtime.errors import InputError, shown


_RE_FLAGS = re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE | re.UNICODE | re.ASCII


def _stdlib(pattern: Any) -> re.Pattern:
    """``pattern`` (an ``re`` pattern, or nltk's ReDoS wrapper around a ``regex`` one) compiled by ``re``."""
    compiled = getattr(pattern, "_rx", pattern)
    return re.compile(compiled.pattern, compiled.flags & _RE_FLAGS)


def _word_tokenizer() -> Callable[[str], list[str]]:
    """``word_tokenize(text, preserve_line=True)``: nltk's tokenizer with its own patterns, run by ``re``.

    Since 3.10 nltk runs every pattern through the ``regex`` engine under a timeout (a guard against
    hostile patterns; these are nltk's fixed ones), a cost paid on every query for nothing. The
    tokens are the same (tests compare them on every Charades-STA and ActivityNet sentence); where
    nltk's tokenizer is laid out differently, nltk's own function is used.
    """
    try:
        base = NLTKWordTokenizer
        tokenizer = type("StdlibReWordTokenizer", (base,), {
            "STARTING_QUOTES": [(_stdlib(p), r) for p, r in base.STARTING_QUOTES],
            "PUNCTUATION": [(_stdlib(p), r) for p, r in base.PUNCTUATION],
            "PARENS_BRACKETS": (_stdlib(base.PARENS_BRACKETS[0]), base.PARENS_BRACKETS[1]),
            "DOUBLE_DASHES": (_stdlib(base.DOUBLE_DASHES[0]), base.DOUBLE_DASHES[1]),
            "ENDING_QUOTES": [(_stdlib(p), r) for p, r in base.ENDING_QUOTES],
            "CONTRACTIONS2": [_stdlib(p) for p in base.CONTRACTIONS2],
            "CONTRACTIONS3": [_stdlib(p) for p in base.CONTRACTIONS3],
        })()
    except (AttributeError, TypeError, ValueError, re.error):
        return lambda text: word_tokenize(text, preserve_line=True)
    return _with_plain_fast_path(tokenizer.tokenize, tokenizer.CONTRACTIONS2 + tokenizer.CONTRACTIONS3)


# Words of ASCII letters between single spaces, with or without a final period: most queries
# ("person opens the door."). On such a sentence nltk's patterns only split off the final period and the
# contractions below, so the tokens are the words plus "." without running nltk's patterns at all.
_PLAIN_SENTENCE = re.compile(r"[A-Za-z]+(?: [A-Za-z]+)*(\.?)")


def _with_plain_fast_path(tokenize_any: Callable[[str], list[str]], contractions: list[re.Pattern]
                          ) -> Callable[[str], list[str]]:
    """``tokenize_any``, with plain sentences that hold none of nltk's ``contractions`` split directly."""
    def tokenize_fast(text: str) -> list[str]:
        plain = _PLAIN_SENTENCE.fullmatch(text)
        if plain is None or any(pattern.search(text) for pattern in contractions):
            return tokenize_any(text)
        return text[:-1].split(" ") + ["."] if plain.group(1) else text.split(" ")

    return tokenize_fast


_word_tokens = _word_tokenizer()


def tokenize(sentence: str) -> list[str]:
    """nltk word tokens (``preserve_line=True``), lower-cased one by one (as the original lower-cases
    after tagging)."""
    return [token.lower() for token in _word_tokens(sentence)]


# Closed-class words (determiners, prepositions, pronouns, conjunctions, auxiliaries and modals):
# they carry nothing a video shows. Training weighs them less when masking words (without nltk's
# tagger) and synthetic archives leave them out of a sentence's signal.
FUNCTION_WORDS = frozenset(
    """
    a an the this that these those some any each every either neither another no all both such
    about above across after against along among around at before behind below beneath beside besides
    between beyond by down during except for from in inside into like near of off on onto out outside
    over past since through throughout till to toward towards under underneath until up upon via with
    within without
    i me my mine myself you your yours yourself yourselves he him his himself she her hers herself it its
    itself we us our ours ourselves they them their theirs themselves who whom whose which what whatever
    someone somebody something anyone anybody anything everyone everybody everything nobody nothing one
    and or but nor so yet because although though while whereas if unless as than whether
    am is are was were be been being do does did doing done have has had having
    can could may might must shall should will would 's 're 'm 've 'd 'll n't
    """.split()
)


def is_word(token: str) -> bool:
    """A token that holds a letter or a digit (in any script): a word, a number or a contraction such as
    "n't"; punctuation alone is none."""
    return any(character.isalnum() for character in token)


def is_content_word(token: str) -> bool:
    """A word that may name something visible: alphabetic and not a function word."""
    return token.isalpha() and token not in FUNCTION_WORDS


@dataclass(frozen=True)
class EncodedQuery:
    """A sentence as the model sees it, plus what was lost on the way."""

    word_ids: tuple[int, ...]  # ids 1..N of the kept words, at most max_num_words
    words: tuple[str, ...]  # the kept words, same order
    dropped: tuple[str, ...]  # tokens outside the kept vocabulary
    truncated: bool  # more than max_num_words kept words: the tail was cut

    def __len__(self) -> int:
        return len(self.word_ids)


# Everything a pickled glove.pkl may name: the collections and numpy types its dict holds, and numpy's
# helpers that rebuild arrays, scalars and dtypes (``numpy.core`` where numpy 1.x wrote the file,
# ``numpy._core`` where numpy 2.x did; ``_frombuffer`` for pickle protocol 5, ``_codecs.encode`` for the
# bytes of protocol 2 and below). A pickle that names anything else could run it as it loads.
_GLOVE_GLOBALS = frozenset(
    {("collections", "Counter"), ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
    | {(f"{core}.multiarray", name) for core in ("numpy.core", "numpy._core") for name in ("_reconstruct", "scalar")}
    | {(f"{core}.numeric", "_frombuffer") for core in ("numpy.core", "numpy._core")}
)


class GloveFormatError(ValueError):
    """A file given as a glove.pkl that is not one, or names something a glove.pkl never holds."""


class _GloveUnpickler(pickle.Unpickler):
    """Unpickles only what ``_GLOVE_GLOBALS`` allows; any other name fails before anything is called."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _GLOVE_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a glove.pkl never holds "
                                         "(refused: unpickling it could run code)")
        return super().find_class(module, name)


def _is_vector(value: Any) -> bool:
    """A 1-D numpy array of numbers, or a list of plain numbers."""
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and value.dtype.kind in "fiu"
    return isinstance(value, list) and all(type(x) in (float, int) for x in value)


def _glove_problem(glove: Any) -> str | None:
    """What is wrong with an unpickled glove.pkl, or None."""
    if not isinstance(glove, dict):
        return f"it holds a {type(glove).__name__}, not a dict"
    missing = {"w2id", "id2vec", "counter"} - set(glove)
    if missing:
        return f"no {sorted(missing)}"
    w2id, id2vec, counter = glove["w2id"], glove["id2vec"], glove["counter"]
    if not isinstance(id2vec, list) or not all(map(_is_vector, id2vec)):
        return "'id2vec' is not a list of 1-D vectors of numbers"
    if len({len(vector) for vector in id2vec}) > 1:
        return "the vectors of 'id2vec' differ in length"
    if not isinstance(w2id, dict) or not all(isinstance(word, str) and type(i) is int and 0 <= i < len(id2vec)
                                             for word, i in w2id.items()):
        return f"'w2id' does not map words to ids 0..{len(id2vec) - 1} of 'id2vec'"
    if not isinstance(counter, Counter) or not all(isinstance(word, str) and type(count) is int
                                                   for word, count in counter.items()):
        return "'counter' is not a Counter of words"
    return None


def load_glove(path: str | Path) -> dict[str, Any]:
    """The original ``glove.pkl``: a dict with ``w2id`` (word -> id), ``id2vec`` (the vectors, by id) and
    ``counter`` (a Counter of words).

    The file is read as data: a pickle naming anything but the types above fails before any of it is
    called, and a file of another layout fails too; both raise GloveFormatError naming the file.
    """
    with open(path, "rb") as handle:
        try:
            glove = _GloveUnpickler(handle).load()
        except Exception as error:  # a damaged pickle raises almost any type; none of them is a glove.pkl
            raise GloveFormatError(f"{path}: not a CNM glove.pkl: {error}") from error
    problem = _glove_problem(glove)
    if problem:
        raise GloveFormatError(f"{path}: not a CNM glove.pkl: {problem}")
    return glove


class Vocabulary:
    """The kept words, id i+1 for ``words[i]``."""

    def __init__(self, words: Sequence[str]):
        self.words = list(words)
        self.index = {word: i + 1 for i, word in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("vocabulary words must be unique")

    @classmethod
    def from_counter(cls, counter: Counter, cap: int) -> "Vocabulary":
        """``counter.most_common(cap)`` in order; ties keep the counter's stored order, as the original."""
        return cls([word for word, _ in counter.most_common(cap)])

    @classmethod
    def from_glove(cls, glove: dict[str, Any] | str | Path, cap: int) -> "Vocabulary":
        if not isinstance(glove, dict):
            glove = load_glove(glove)
        return cls.from_counter(glove["counter"], cap)

    @property
    def size(self) -> int:
        """The model's vocabulary size: kept words plus the padding id 0."""
        return len(self.words) + 1

    def word_vectors(self, glove: dict[str, Any]) -> np.ndarray:
        """``[size, dim]`` float32 table: row 0 zeros (padding), row i the GloVe vector of word i."""
        rows = [np.asarray(glove["id2vec"][glove["w2id"][word]], dtype=np.float32) for word in self.words]
        table = np.zeros((self.size, rows[0].shape[0]), dtype=np.float32)
        table[1:] = np.stack(rows)
        return table

    def encode(self, sentence: str, max_num_words: int = 20, name: str | None = None) -> EncodedQuery:
        """Kept word ids of ``sentence``; InputError when it is not a str (``bad_field``), blank
        (``empty_query``) or keeps no word (``out_of_vocabulary``).

        Every token in the vocabulary is kept, punctuation too, as the original keeps it; but a sentence
        whose kept tokens are all punctuation ("they sit down." with only "." known) is out of vocabulary:
        the model would ground it on nothing it was asked.
        """
        label = name if name is not None else shown(sentence)
        if not isinstance(sentence, str):
            raise InputError("bad_field", f"query {label}: the sentence must be a str, got {type(sentence).__name__}")
        if not sentence.strip():
            raise InputError("empty_query", f"query {label}: the sentence is empty")
        kept, dropped = [], []
        for token in tokenize(sentence):
            (kept if token in self.index else dropped).append(token)
        if not any(map(is_word, kept)):
            raise InputError("out_of_vocabulary",
                             f"query {label}: no word of {shown(sentence)} is in the model's vocabulary")
        words = kept[:max_num_words]
        return EncodedQuery(
            word_ids=tuple(self.index[w] for w in words),
            words=tuple(words),
            dropped=tuple(dropped),
            truncated=len(kept) > max_num_words,
        )


def pad_word_ids(queries: Sequence[EncodedQuery], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch word ids as ``[B, width]`` int64 with slot 0 the start slot, plus ``words_len`` ``[B]``.

    Slot 0 holds id 0: the model replaces it by its learned start vector.
    """
    word_ids = np.zeros((len(queries), width), dtype=np.int64)
    words_len = np.zeros(len(queries), dtype=np.int64)
    for row, query in enumerate(queries):
        word_ids[row, 1 : len(query) + 1] = query.word_ids
        words_len[row] = len(query)
    return word_ids, words_len

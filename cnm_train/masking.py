"""Which words the reconstructor must fill in: the original's weighted choice of masked words.

Each query masks ``max(l // 3, 1)`` of its ``l`` words, drawn without replacement with probabilities
``softmax(w)``, where content words (nouns, verbs, adjectives, adverbs) weigh 2 and the others 1.
The original tags words with nltk's perceptron tagger. Its data cannot always be downloaded, so
without it a closed-class word list decides: function words and punctuation weigh 1, the rest 2.
The method used is recorded in the checkpoint's config (``train.word_mask_weights``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from nltk import pos_tag

from cnm_runtime.text import is_content_word

NLTK_TAGGER = "nltk_pos_tag"
CLOSED_CLASS_LIST = "closed_class_list"

CONTENT_WEIGHT, FUNCTION_WEIGHT = 2, 1
CONTENT_TAG_PARTS = ("NN", "VB", "JJ", "RB")  # the original tests `'NN' in tag` etc., so WRB counts too


def tagger_available() -> bool:
    """True when nltk's POS tagger data is installed (it is looked up lazily, on first use)."""
    try:
        pos_tag(["test"])
    except LookupError:
        return False
    return True


def choose_method() -> str:
    """The original's tagger where it is installed, else the offline closed-class list."""
    return NLTK_TAGGER if tagger_available() else CLOSED_CLASS_LIST


def word_weights(words: Sequence[str], method: str) -> np.ndarray:
    """Weight 2 for content words, 1 for the others, by ``method`` (``NLTK_TAGGER`` or ``CLOSED_CLASS_LIST``)."""
    if method == NLTK_TAGGER:
        is_content = [any(part in tag for part in CONTENT_TAG_PARTS) for _, tag in pos_tag(list(words))]
    elif method == CLOSED_CLASS_LIST:
        is_content = [is_content_word(word) for word in words]
    else:
        raise ValueError(f"unknown word weighting method {method!r}")
    return np.where(is_content, CONTENT_WEIGHT, FUNCTION_WEIGHT).astype(np.float32)


def mask_probabilities(weights: np.ndarray) -> np.ndarray:
    """``softmax(weights)`` in float32, as the original collate stores it."""
    exp = np.exp(np.asarray(weights, dtype=np.float32))
    return exp / exp.sum()


def sample_masked_slots(words_len: np.ndarray, probabilities: np.ndarray, num_slots: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Bool ``[B, num_slots]``: True at the word slots (1..l, slot 0 is the start slot) to mask.

    ``probabilities[i, :l]`` are query i's word probabilities; ``max(l // 3, 1)`` slots are drawn
    without replacement. Called once per forward pass, so the two phases of a batch mask different words.
    """
    masked = np.zeros((len(words_len), num_slots), dtype=bool)
    for row, length in enumerate(np.asarray(words_len).tolist()):
        p = probabilities[row, :length].astype(np.float64)
        chosen = rng.choice(np.arange(1, length + 1), size=max(length // 3, 1), replace=False, p=p / p.sum())
        masked[row, chosen] = True
    return masked

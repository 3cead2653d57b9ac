"""Text and feature preprocessing reproduce the original code (golden vectors) exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cnm_runtime import InputError, Vocabulary, resample_clips, validate_features
from cnm_runtime.features import resample_rows
from cnm_runtime.videos import Clips
from nltk.tokenize import word_tokenize

from cnm_runtime.text import load_glove, tokenize
from golden.derive import digest


@pytest.fixture
def golden(golden_dir):
    return np.load(golden_dir / "expected.npz")


def test_golden_frames_match_exactly(golden_inputs, golden):
    """Every bit of the resampled clips: their SHA-256 is that of the original's frames_feat."""
    np.testing.assert_array_equal(golden_inputs.raw_num_rows, golden["raw_num_rows"])
    assert [digest(frames) for frames in golden_inputs.frames] == golden["frames_feat_sha256"].tolist()


def test_golden_words_match_exactly(golden_inputs, golden):
    """Word ids, lengths and every bit of the word vectors after the start slot (the original's words_feat)."""
    assert golden_inputs.word_vectors.shape == (1112, 300)
    np.testing.assert_array_equal(golden_inputs.words_len, golden["words_len"])
    np.testing.assert_array_equal(golden_inputs.word_ids[:, 1:], golden["words_id"])
    assert [digest(words[1:]) for words in golden_inputs.words_feat] == golden["words_feat_sha256"].tolist()


def test_dropped_tokens_on_real_charades_query(charades_dir):
    glove = load_glove(charades_dir / "glove.pkl")
    vocab = Vocabulary.from_glove(glove, 1111)
    test = json.loads((charades_dir / "test.json").read_text())
    encoded = vocab.encode(test[176][3], 20)
    assert encoded.dropped, "test.json[176] has a token outside the vocabulary"
    assert len(encoded.word_ids) == len(encoded.words)
    assert all(w not in vocab.index for w in encoded.dropped)
    # the first 176 queries keep every token
    assert not any(vocab.encode(sentence, 20).dropped for _, _, _, sentence in test[:176])


def test_long_activitynet_sentences_truncate_to_20(activitynet_dir, charades_dir):
    # ActivityNet's own glove.pkl is not available here; Charades' vocabulary still keeps many words.
    vocab = Vocabulary.from_glove(load_glove(charades_dir / "glove.pkl"), 1111)
    val = json.loads((activitynet_dir / "val_data.json").read_text())
    long = [s for _, _, _, s in val if len(s.split()) > 40][:50]
    encodings = [vocab.encode(s, 20) for s in long]
    truncated = [e for e in encodings if e.truncated]
    assert truncated
    assert all(len(e.word_ids) == 20 for e in truncated)
    full = vocab.encode(long[encodings.index(truncated[0])], 1000)
    assert full.word_ids[:20] == truncated[0].word_ids


TRICKY_SENTENCES = [
    'He said, "it\'s done" -- then left.', "``quoted'' and 'single' quotes", "(brackets) [and] {braces} <angles>",
    "can't won't gonna gimme wanna lemme d'ye 'tis 'twas", "A person... opens it?! No; yes: maybe.",
    "prices: $3.88, 3,36 euros & 50% off", "«guillemets» “curly” ‘quotes’ „low”", "end.'\"", "  spaced   out  ",
    "E-mail me at a@b.com / http://x.org", "Mr. Smith's dog; the dogs' bowls", "",
    # plain sentences (letters, single spaces, a final period or none) take a fast path
    "Person opens the door.", "person opens the door", "X.", "The person cannot open it.",
    "gonna gotta lemme gimme wanna go", "a person holds a cup..", "person opens the door. ", " person sits.",
]


def _nltk_mismatches(sentences):
    return [s for s in sentences if tokenize(s) != [t.lower() for t in word_tokenize(s, preserve_line=True)]]


def test_tokens_are_nltks_on_tricky_sentences():
    """The tokenizer runs nltk's patterns with the standard re engine: the same tokens as nltk."""
    assert not _nltk_mismatches(TRICKY_SENTENCES)


def test_tokens_are_nltks_on_every_shared_sentence(charades_dir, activitynet_dir):
    sentences = []
    for path in (charades_dir / "train.json", charades_dir / "test.json",
                 activitynet_dir / "val_data.json", activitynet_dir / "test_data.json"):
        sentences += [entry[3] for entry in json.loads(path.read_text())]
    mismatches = _nltk_mismatches(sentences)
    assert len(sentences) > 40_000 and not mismatches, mismatches[:5]


def test_vocabulary_ties_keep_counter_order():
    from collections import Counter

    counter = Counter({"b": 2, "a": 2, "c": 5, "d": 1})
    vocab = Vocabulary.from_counter(counter, 3)
    assert vocab.words == ["c", "b", "a"]
    assert vocab.index == {"c": 1, "b": 2, "a": 3}


def test_query_without_kept_words_is_a_typed_error():
    vocab = Vocabulary(["person", "door"])
    with pytest.raises(InputError) as error:
        vocab.encode("zebras dance", 20, name="q7")
    assert error.value.code == "out_of_vocabulary" and "q7" in str(error.value)
    with pytest.raises(InputError) as error:
        vocab.encode("   ", 20)
    assert error.value.code == "empty_query"


def test_resample_short_and_long_sequences():
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    clips = resample_clips(rows, 4)  # bounds round([0, 1.5, 3, 4.5, 6]) = [0, 2, 3, 4, 5]
    np.testing.assert_array_equal(clips, [[1, 2], [4, 5], [6, 7], [8, 9]])
    one = resample_clips(np.ones((1, 3), np.float32), 200)
    assert one.shape == (200, 3) and (one == 1).all()


@pytest.mark.parametrize("num_rows", [1, 90, 200, 201, 450])
def test_short_videos_keep_their_rows_until_the_clips_are_gathered(num_rows):
    raw = np.random.default_rng(num_rows).random((num_rows, 3), dtype=np.float32)
    source, rows = resample_rows(raw, 200)
    assert (source is raw) == (num_rows <= 200) and len(rows) == 200
    clips = Clips(source, rows, None)
    out = np.empty((200, 3), np.float32)
    clips.gather_into(out)
    np.testing.assert_array_equal(out, resample_clips(raw, 200))
    np.testing.assert_array_equal(clips.frames, out)


@pytest.mark.parametrize(
    "array, code",
    [
        (np.zeros((5,), np.float32), "not_2d"),
        (np.zeros((0, 4), np.float32), "no_rows"),
        (np.zeros((5, 3), np.float32), "wrong_width"),
        (np.array([[0, np.nan, 0, 0]], np.float32), "non_finite"),
        (np.array([[0, np.inf, 0, 0]], np.float32), "non_finite"),
    ],
)
def test_bad_features_name_the_video(array, code):
    with pytest.raises(InputError) as error:
        validate_features(array, 4, "vid42")
    assert error.value.code == code and "vid42" in str(error.value)

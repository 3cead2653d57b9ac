"""One error type for bad user input, with a stable code that batch runs write to their errors file.

``ERROR_CODES`` lists every code, with what it means: an error record never carries a code missing there.
"""

ERROR_CODES: dict[str, str] = {
    # a line of the queries file
    "malformed_json": "the line (or the whole annotation list) is not valid JSON, or nests too deeply",
    "bad_encoding": "the line is not UTF-8 text, or a string in it is not valid Unicode (a lone surrogate)",
    "line_too_long": "the line is longer than cnm_runtime.queries.MAX_LINE_BYTES; it is skipped unread",
    "list_too_large": "the annotation list is larger than cnm_runtime.queries.MAX_LIST_BYTES; it is not read",
    "not_an_object": "the line is JSON, but not an object",
    "malformed_entry": "an annotation-list entry is not [video, duration, [start, end], sentence]",
    "missing_field": "the line has no 'video' or no 'query'",
    "bad_field": "a field has the wrong type or value ('video', 'query', 'qid', 'duration' or 'timestamps')",
    "bad_duration": "the duration, the query's or the archive's, is not a positive number of seconds",
    "duplicate_qid": "a later line with the qid of an earlier line",
    # the sentence
    "empty_query": "the sentence is empty",
    "out_of_vocabulary": "no word of the sentence is in the model's vocabulary",
    # the video
    "unknown_video": "the archive has no such video",
    "unreadable_video": "the archive has the video but it cannot be read (damaged, a link leading nowhere, "
                        "a missing source file)",
    "link_outside_archive": "outside links are refused and the video's values are in a file outside the "
                            "archive's folder",
    "not_2d": "the video's features are not a 2-D array",
    "no_rows": "the video's features have no rows",
    "wrong_width": "the video's features are not as wide as the model expects",
    "non_finite": "the video's features contain NaN or Inf",
    # the model
    "non_finite_output": "the model gave a non-finite center or width",
    "output_out_of_range": "the model gave a center outside [0, 1] or a negative width (it is not a working "
                           "CNM export); no window is made up for the query",
    # anything else
    "internal_error": "handling this query or its video raised an unexpected exception (a bug: please report "
                      "the message, which names the exception); the run went on without it",
}


def require_code(code: str) -> None:
    """ValueError unless ``code`` is one of ``ERROR_CODES``."""
    if code not in ERROR_CODES:
        raise ValueError(f"{code!r} is not an error code of cnm_runtime.errors.ERROR_CODES")


class InputError(ValueError):
    """A query or a video that cannot be processed.

    `code` is machine readable (e.g. ``unknown_video``), one of ``ERROR_CODES``; the message names the
    offending input.
    """

    def __init__(self, code: str, message: str):
        require_code(code)
        super().__init__(message)
        self.code = code
        self.message = message

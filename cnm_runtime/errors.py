"""One error type for bad user input, with a stable code that batch runs write to their errors file."""


class InputError(ValueError):
    """A query or a video that cannot be processed.

    `code` is machine readable (e.g. ``unknown_video``); the message names the offending input.
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

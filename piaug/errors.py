"""The error type for bad input, shared by the readers, the data preparation and the pipeline."""


class UserError(ValueError):
    """Bad input or configuration: the message says which file or field, and what to do.

    The CLI prints it as one line (``error: ...``) without a traceback.
    """

"""The error type for bad input, and the small helpers that name the field at fault."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any


class UserError(ValueError):
    """Bad input or configuration: the message says which file or field, and what to do.

    The CLI prints it as one line (``error: ...``) without a traceback.
    """


def require(checks: Iterable[tuple[str, Any, bool, str]]) -> None:
    """Raises ValueError ``"field=value: what"`` for the first ``(field, value, ok, what)``
    that is not ``ok``: the checks of a settings object, named by field."""
    for field, value, ok, what in checks:
        if not ok:
            raise ValueError(f"{field}={value!r}: {what}")


@contextlib.contextmanager
def fields_of(prefix: str):
    """Turns a settings object's ValueError into a UserError naming the config field
    (``fields_of("config.loss.")``: ``temperature=0.0: ...`` -> ``config.loss.temperature=...``)."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, TypeError) as e:
        raise UserError(f"{prefix}{e}") from None

"""User-facing errors: one clear line naming the problem and the fix, never a traceback."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A problem with the user's input or environment; its message says what to do."""


def exit_on_user_error(func):
    """Run `func`; turn a UserError into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper

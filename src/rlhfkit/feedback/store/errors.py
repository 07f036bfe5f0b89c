"""What the store refuses, one class per answer the web app gives (app.py maps each to its HTTP status)."""

from rlhfkit.files import UserError


class StoreError(UserError):
    """A request the store refuses: a person's mistake, printed as one line by the CLI."""


class NotFound(StoreError):  # 404
    pass


class InvalidRanking(StoreError):  # 422
    pass


class Conflict(StoreError):  # 409
    pass


class Unavailable(StoreError):  # 503: the database failed (down, locked past the timeout, disk full), not the client
    pass

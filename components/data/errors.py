"""The errors of bad input data (a leaf module, so that every data module can raise them)."""

from __future__ import annotations


class DataSourceError(ValueError):
    """Bad input data; the message names the file, split or field."""


class BadImageError(DataSourceError):
    """One image that cannot be used (empty, not an image, corrupt, too many pixels, WebP...).

    `where` names it (its path, and its manifest line or record), `reason` says why: the message is
    the one line "<where>: <reason>". Skipped under --on-bad-image skip; every other error stops."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason

    def __reduce__(self):  # Beam pickles exceptions between workers
        return (type(self), (self.where, self.reason))

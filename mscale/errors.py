"""Errors that reach the user as one line and a non-zero exit code."""


class MscaleError(Exception):
    """Bad input or a failed precondition; the message says what was wrong and what to do."""

    exit_code = 2


class UnknownSymbolError(MscaleError):
    """The exchange does not list the symbol (Binance error -1121)."""


class CorruptShardError(MscaleError):
    """An existing shard cannot be read; it is never overwritten with less data."""


class ChecksumError(MscaleError):
    """A downloaded archive does not match its published sha256."""


class DownloadError(MscaleError):
    """A download failed after every retry."""


class CheckFailedError(MscaleError):
    """A warehouse check returned offending rows."""

"""The project's errors: one base class, so that the command line prints these as one-line
messages (naming the file, key or option at fault) while any other exception keeps its
traceback, since it means a bug rather than bad input."""

from __future__ import annotations


class LdctError(Exception):
    """Base of every error caused by the user's input: config, data, command line."""


class ConfigError(LdctError, ValueError):
    """An invalid config key or value; the message names the key (experiments.x.train.lr)."""


class UsageError(LdctError, ValueError):
    """Options of a command that do not fit together."""


class DataError(LdctError, ValueError):
    """Unreadable, missing or inconsistent input data (NIfTI, DICOM, NaN); names the file."""


class MissingFileError(DataError, FileNotFoundError):
    """An input file that does not exist."""


class TrainingError(LdctError, RuntimeError):
    """Training cannot go on (a non-finite loss, a missing segmenter)."""

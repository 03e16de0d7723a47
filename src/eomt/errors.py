"""The project's error family: what the command line reports as a one-line user error.

Every error that user input can cause (a config key, a checkpoint, a dataset, an image, an option
value) derives from `EomtError`; the classes keep their older bases too (`ValueError`,
`FileNotFoundError`, ...), so `except ValueError` callers still work. Any other exception that
reaches the command line is a bug and shows its traceback.
"""

from __future__ import annotations


class EomtError(Exception):
    """Base of the errors a user can cause and fix; the message names the file, key or value."""


class OptionError(EomtError, ValueError):
    """An option or argument value that cannot be used (e.g. an unknown task or precision name)."""


class InputError(EomtError, ValueError):
    """Data that do not fit what they are used with: label ids out of range, shapes that disagree,
    a file whose content is not what its name promises."""


class MissingFileError(EomtError, FileNotFoundError):
    """A file or folder the user named that does not exist; the message names the path."""


class OutputExistsError(EomtError, FileExistsError):
    """An output path that is already taken (e.g. a folder that is not empty)."""


class NotAFolderError(EomtError, NotADirectoryError):
    """An output path that exists and is not a folder where a folder is expected."""


__all__ = ["EomtError", "InputError", "MissingFileError", "NotAFolderError", "OptionError", "OutputExistsError"]

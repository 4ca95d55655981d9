"""Exceptions raised by packtool.

Every error a user can cause derives from :class:`PackToolError`; its message is one line that
says what is wrong and, where it helps, what to do. The CLI prints it as ``Error: <message>``.
"""


class PackToolError(Exception):
    """Base class of every packtool error meant for the user."""


class PackFormatError(PackToolError):
    """A file is not a valid pack or archive (foreign, truncated, tampered or too new)."""


class ArchitectureError(PackToolError):
    """An architecture cannot be built or does not fit PackNet (e.g. no Linear classifier)."""


class DataError(PackToolError):
    """A dataset is missing, empty, unreadable or does not match the request."""


class TaskError(PackToolError):
    """A task name is unknown or duplicated, or a task's settings are invalid."""


class CapacityError(PackToolError):
    """The network has no free weights left for another task."""


class LockError(PackToolError):
    """Another process holds the lock on a model file."""

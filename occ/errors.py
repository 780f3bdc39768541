"""Errors a user causes and can fix (a bad option, file or config). The scripts print them as one
line naming the file or option; every other exception keeps its traceback."""


class UsageError(ValueError):
    """A bad command-line option, config value or input file; the message names it."""


class DataError(UsageError):
    """An input file (info file, point cloud, image, ground truth, prediction) that cannot be used."""

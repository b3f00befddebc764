"""One error type for everything a user can get wrong: the CLI prints its message as one line."""


class SimulacraError(Exception):
    """A problem with the user's input or files, reported as one clear line (no traceback)."""


class DatasetError(SimulacraError):
    """A data set that is missing, corrupt, truncated or from an unknown format version."""

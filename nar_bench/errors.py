"""One exception type for bad user input; its message names the problem and the fix."""


class NarBenchError(Exception):
    """Raised for wrong config keys, missing files, mismatching checkpoints and similar input errors.
    The CLI prints it as one line and exits with status 2."""

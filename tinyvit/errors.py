"""The error tinyvit raises about what a user asked for or handed in.

`UsageError` is for input the user controls: a command-line option, a dataset
spec, a data folder or archive, a checkpoint or image file, a download that
fails. The command-line tools (train, evaluate, predict) print these as one
line, `error: ...`, and exit; every other exception keeps its traceback, since
it points at a fault in the code rather than in the input. It is a ValueError,
so code that catches ValueError keeps working.
"""


class UsageError(ValueError):
    """Bad input from the user: the message says what was expected and what came."""

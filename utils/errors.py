"""The one exception type that means "the user gave us something we cannot use".

`main.py` turns it into a single line on stderr and exit code 2; anything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """Bad config, bad data or a bad path: reported as one line, exit code 2."""

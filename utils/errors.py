"""User errors and how the command-line tools report them.

A :class:`UserError` is bad input, not a bug: a config key or value, a missing or unreadable file, a
malformed list line, a checkpoint that does not fit. Its message names the key, file or line. The
command-line entry points run through :func:`run_command`, which prints such an error as one line and
exits with status 2; the traceback goes only to the run's log file
(``utils.logger.log_traceback_to_file``). Any other exception is a bug and keeps its traceback.
"""
import sys

USER_ERROR_EXIT_STATUS = 2


class UserError(Exception):
    """Bad input from the user; the message names the key, file or line to fix."""


class InputFileError(UserError, FileNotFoundError):
    """A file the config or the command line names does not exist or cannot be read."""


def user_error_message(error):
    """The message of ``error`` without the text a DataLoader worker wraps around a re-raised error.

    An error raised in a worker reaches the main process as the same type, its message being
    "Caught X in DataLoader worker process N. Original Traceback ...", whose last line is
    ``module.X: <the original message>``.
    """
    message = str(error).strip()
    if not message.startswith('Caught '):
        return message
    last_line = message.splitlines()[-1]
    return last_line.split(': ', 1)[-1]


def run_command(main_function, argv=None):
    """Run a tool's ``main(argv)``; a :class:`UserError` prints ``error: <message>`` and exits with 2."""
    try:
        return main_function(argv)
    except UserError as error:
        print(f'error: {user_error_message(error)}', file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_STATUS)


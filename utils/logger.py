"""Logging set-up for a run: rank 0 logs to the console and to ``OUTPUT/log_rank0.txt``.

Every module logs through its own ``logger = logging.getLogger(__name__)``; this module only attaches
handlers to the root logger, once per run, and removes them again so that ``main`` can run repeatedly in
one process (as the tests do).
"""
import logging
import os
import sys

LOG_FORMAT = '[%(asctime)s %(name)s] %(levelname)s %(message)s'
DATE_FORMAT = '%Y-%m-%d %H:%M:%S'
LOG_FILE = 'log_rank0.txt'

_handlers = []  # handlers attached by setup_logging, removed by close_logging


def setup_logging(output_dir, rank=0):
    """Send log records to the console and (on rank 0, given ``output_dir``) to ``output_dir/log_rank0.txt``.

    Ranks other than 0 only print warnings and errors, so that a multi-process run reads like a
    single one.

    Args:
        output_dir: the run's output folder (created if needed), or None for the console only.
        rank: this process's global rank.

    Returns:
        the path of the log file (rank 0) or None.
    """
    close_logging()
    formatter = logging.Formatter(LOG_FORMAT, DATE_FORMAT)
    console = logging.StreamHandler(sys.stdout)
    _handlers.append(console)
    log_path = None
    if rank == 0 and output_dir:
        os.makedirs(output_dir, exist_ok=True)
        log_path = os.path.join(output_dir, LOG_FILE)
        _handlers.append(logging.FileHandler(log_path, mode='a', encoding='utf-8'))
    root = logging.getLogger()
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    for handler in _handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    return log_path


def close_logging():
    """Detach and close the handlers of :func:`setup_logging`."""
    root = logging.getLogger()
    while _handlers:
        handler = _handlers.pop()
        root.removeHandler(handler)
        handler.close()


def log_traceback_to_file(message, error):
    """Write ``message`` and the traceback of ``error`` to the log file only, not to the console: a user
    error is printed as one line, and its traceback is kept for whoever needs it."""
    record = logging.getLogger(__name__).makeRecord(
        __name__, logging.ERROR, __file__, 0, message, None, (type(error), error, error.__traceback__))
    for handler in _handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)

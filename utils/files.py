"""Writing output files so that a reader never sees half of one.

Every file the project writes for later use (checkpoints, result JSON, pictures, annotation lists, the
synthetic dataset's lists) goes through :func:`atomic_write`: the content is written to a temporary file
in the same folder and moved into place with ``os.replace``, which is atomic on POSIX file systems. A
crash, a full disk or Ctrl-C while writing leaves the previous file (or none), never a truncated one.
Files that several processes may write at once (the synthetic dataset) are guarded by
:func:`exclusive_lock`.
"""
import contextlib
import fcntl
import json
import logging
import os

logger = logging.getLogger(__name__)


def partial_path(path):
    """The temporary file, next to ``path``, that this process's :func:`atomic_write` fills before moving
    it to ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    # the process id keeps concurrent writers (several ranks, several runs) off each other's temporaries
    return os.path.join(folder, f'.{os.path.basename(path)}.{os.getpid()}.partial')


@contextlib.contextmanager
def atomic_write(path, mode='w'):
    """Open a temporary file next to ``path`` for writing; move it to ``path`` when the block succeeds.

    Args:
        path: the file to (re)place; its folder is created if needed.
        mode: ``'w'`` (text, UTF-8) or ``'wb'`` (binary).

    Yields:
        the open file object. If the block raises, the temporary file is removed and ``path`` is untouched.
    """
    temporary = partial_path(path)
    os.makedirs(os.path.dirname(temporary), exist_ok=True)
    try:
        with open(temporary, mode, encoding=None if 'b' in mode else 'utf-8') as f:
            yield f
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path) as f:
        f.write(text)


def write_json(path, payload, indent=1):
    """Write ``payload`` as JSON to ``path`` atomically (ends with a newline)."""
    write_text(path, json.dumps(payload, indent=indent) + '\n')


@contextlib.contextmanager
def exclusive_lock(path, purpose):
    """Hold an exclusive lock on the file ``path`` (created if needed) for the block; wait, saying so,
    while another process holds it.

    The lock is ``flock``'s: the system releases it when its holder exits, even when killed, so a crash
    never leaves it taken. It holds across processes and, on file systems that support ``flock`` (NFS on
    Linux does), across machines.

    Args:
        path: the lock file.
        purpose: what the holder does, for the log line of a process that waits.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'a', encoding='utf-8') as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info('waiting for another process to finish %s (lock %s)', purpose, path)
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield  # closing the file at the end of the block releases the lock

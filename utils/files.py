"""Writing output files so that a reader never sees half of one.

Every file the project writes for later use (checkpoints, result JSON, pictures, annotation lists, the
synthetic dataset's lists) goes through :func:`atomic_write`: the content is written to a temporary file
in the same folder and moved into place with ``os.replace``, which is atomic on POSIX file systems. A
crash, a full disk or Ctrl-C while writing leaves the previous file (or none), never a truncated one.
"""
import contextlib
import json
import os


@contextlib.contextmanager
def atomic_write(path, mode='w'):
    """Open a temporary file next to ``path`` for writing; move it to ``path`` when the block succeeds.

    Args:
        path: the file to (re)place; its folder is created if needed.
        mode: ``'w'`` (text, UTF-8) or ``'wb'`` (binary).

    Yields:
        the open file object. If the block raises, the temporary file is removed and ``path`` is untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # the process id keeps concurrent writers (several ranks, several runs) off each other's temporaries
    temporary = os.path.join(folder, f'.{os.path.basename(path)}.{os.getpid()}.partial')
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

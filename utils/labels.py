"""Label / prompt CSVs: ``id,name`` with one row per class, ids 0..K-1 in the project's class order."""
import csv
import os

from utils.errors import InputFileError, UserError

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LabelListError(UserError, ValueError):
    """A malformed label CSV; the message names the file and line."""


def locate_project_file(path):
    """Return ``path`` if it exists, else the same relative path under the repository root.

    Shipped files (``labels/*.csv``) are named relative to the repository; this lets the code run from
    any working directory. A path that exists nowhere is returned unchanged, for the caller's error.
    """
    if os.path.exists(path) or os.path.isabs(path):
        return path
    candidate = os.path.join(REPOSITORY_ROOT, path)
    return candidate if os.path.exists(candidate) else path


def read_label_csv(path):
    """Read a label CSV and return the class prompts, ordered by id.

    Args:
        path: CSV file with a header ``id,name`` and one row per class, ids 0..K-1 (any row order).

    Returns:
        list[str]: the ``name`` of class 0, 1, ..., K-1.

    Raises:
        InputFileError: the file does not exist.
        LabelListError: a malformed row, a repeated or missing id; the message names the file and line.
    """
    resolved = locate_project_file(path)
    if not os.path.isfile(resolved):
        raise InputFileError(f'label list not found: {path}')
    with open(resolved, newline='', encoding='utf-8') as f:
        rows = list(csv.reader(f))
    if not rows or [cell.strip() for cell in rows[0][:2]] != ['id', 'name']:
        raise LabelListError(f'{path}:1: expected the header "id,name"')
    names = {}
    for line_number, row in enumerate(rows[1:], start=2):
        if not row or not ''.join(row).strip():
            continue
        if len(row) != 2 or not row[0].strip().isdigit() or not row[1].strip():
            raise LabelListError(f'{path}:{line_number}: expected "<id>,<name>", got {",".join(row)!r}')
        class_id = int(row[0])
        if class_id in names:
            raise LabelListError(f'{path}:{line_number}: id {class_id} appears twice')
        names[class_id] = row[1].strip()
    missing = sorted(set(range(len(names))) - set(names))
    if missing or not names:
        raise LabelListError(f'{path}: ids must be 0..K-1 without gaps; missing {missing or "all"}')
    return [names[i] for i in range(len(names))]

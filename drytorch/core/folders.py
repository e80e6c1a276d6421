"""What may become a folder: names checked once, paths checked early.

Experiment names, run ids, model names and source names all end up as
folder or file names (``<par_dir>/<experiment>/runs/<run>/csv_metrics/
<model>/<source>.csv``).  A name with a separator or a ``..`` would write
outside the run's folder, and a character that one system forbids would
fail hours later on another; so every such name passes
:func:`validate_folder_name` where it is given, with one rule for all.

A ``par_dir`` that is a file would fail with a bare ``NotADirectoryError``
at the first write, possibly after training started; :func:`check_folder`
says which path is in the way when the folder is given, and again when a
run is about to use it.
"""

from __future__ import annotations

import pathlib

from drytorch.core import exceptions

__all__ = [
    'FILE_ROOM',
    'FORBIDDEN',
    'MAX_NAME_BYTES',
    'check_folder',
    'validate_folder_name',
]

FORBIDDEN = frozenset('<>:"/\\|?*')
"""Characters that Windows forbids in a name; '/' and '\\' also separate."""

MAX_NAME_BYTES = 255
"""The longest name most file systems (ext4, APFS, NTFS) accept, in bytes."""

FILE_ROOM = 32
"""Bytes a source or actor name leaves free: its files add suffixes.

``<source>.previous.csv`` adds 13 bytes, and the temporary file of an atomic
write (``.<source>.csv.<pid>.tmp``) up to 17.
"""


def validate_folder_name(kind: str, name: str, *, room: int = 0) -> str:
    """Return ``name`` if it can be a folder name on every system.

    Args:
        kind: what the name names (``'Experiment'``, ``'Model'``...), for
            the error.
        name: the name to check.
        room: bytes kept free for what the library appends to the name
            (``.csv``, a temporary file's suffix), so that a name accepted
            here never makes a file name too long later.

    Raises:
        NameNotValidError: naming the rule the name breaks.

    """
    bad = sorted({c for c in name if c in FORBIDDEN or _is_control(c)})
    if bad:
        shown = ' '.join(repr(c) for c in bad)
        raise exceptions.NameNotValidError(
            kind, name, f'it contains the characters {shown}'
        )
    if not name:
        raise exceptions.NameNotValidError(kind, name, 'it is empty')
    limit = MAX_NAME_BYTES - room
    size = len(name.encode('utf-8'))
    if size > limit:
        raise exceptions.NameNotValidError(
            kind,
            name,
            f'it is {size} bytes long in UTF-8, more than the {limit} '
            f'allowed for a {kind} name',
        )
    if name in {'.', '..'}:
        raise exceptions.NameNotValidError(
            kind, name, 'it is a dot name, which means a folder already'
        )
    if name != name.strip():
        raise exceptions.NameNotValidError(
            kind, name, 'it begins or ends with whitespace'
        )
    return name


def _is_control(char: str) -> bool:
    """Control characters: invisible, and refused by some file systems."""
    return ord(char) < 32 or ord(char) == 127


def check_folder(owner: str, folder: pathlib.Path) -> pathlib.Path:
    """Return ``folder`` unless it, or a folder above it, is a file.

    Only the existing part of the path is looked at, from the bottom up:
    the first existing path is the one that a ``mkdir`` would trip on.
    Nothing is created, so nothing already written can be lost.

    Raises:
        NotAFolderError: naming the file in the way.

    """
    for path in (folder, *folder.parents):
        if path.is_dir():
            return folder
        # a file, or a broken link; asked again after is_dir, since another
        # process may have made the folder in between (concurrent runs)
        if (path.exists() or path.is_symlink()) and not path.is_dir():
            raise exceptions.NotAFolderError(owner, folder, path)
    return folder

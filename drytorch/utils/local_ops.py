"""Delete, rename or clone an experiment's local folders (DRYTorch's API).

An experiment's data lives in ``<par_dir>/<name>/`` (its registry, its
runs, and the files of dumpers without a ``par_dir`` of their own) and, for
dumpers given a folder under ``par_dir``, in ``<par_dir>/<folder>/<name>/``
(DRYTorch's layout).  These functions act on every such folder at once.

What they do not reach: rows in shared databases (``SQLConnection``'s
``metrics.db``, a PostgreSQL server) and remote services (W&B, MLflow),
which still know the experiment by its old name.

Every folder is checked before any is touched, so a clash leaves nothing
half done; a clone is copied to a temporary name and renamed into place.
Do not use them while a run of the experiment is running.  Under a process
group only rank zero acts (others return at once, with no collective): the
folders are shared files.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Callable

from drytorch.core.folders import validate_folder_name
from drytorch.distributed import ranks

__all__ = [
    'clone_experiment_data',
    'delete_experiment_data',
    'rename_experiment_data',
]


def _experiment_folders(
    par_dir: pathlib.Path | str, exp_name: str
) -> list[pathlib.Path]:
    """``par_dir/exp_name`` and ``par_dir/*/exp_name``, those that exist."""
    validate_folder_name('Experiment', exp_name)
    root = pathlib.Path(par_dir)
    if not root.is_dir():
        raise NotADirectoryError(
            f'par_dir {str(root)!r} is not a folder; pass the par_dir the '
            'experiment was created with.'
        )
    found = [root / exp_name] if (root / exp_name).is_dir() else []
    for folder in sorted(root.iterdir()):
        candidate = folder / exp_name
        if folder.is_dir() and folder.name != exp_name and candidate.is_dir():
            found.append(candidate)
    return found


def _move_or_copy(
    par_dir: pathlib.Path | str,
    exp_name: str,
    new_exp_name: str,
    op: Callable[[pathlib.Path, pathlib.Path], None],
) -> list[pathlib.Path]:
    validate_folder_name('Experiment', new_exp_name)
    if new_exp_name == exp_name:
        raise ValueError(f'The new name is the old one ({exp_name!r}).')
    if not ranks.is_rank_zero():
        return []
    sources = _experiment_folders(par_dir, exp_name)
    targets = [source.with_name(new_exp_name) for source in sources]
    taken = [str(t) for t in targets if t.exists()]
    if taken:
        raise FileExistsError(
            f'Experiment {new_exp_name!r} already has data in {taken}; '
            'choose another name or delete that data first.'
        )
    for source, target in zip(sources, targets, strict=True):
        op(source, target)
    return targets


def _clone(source: pathlib.Path, target: pathlib.Path) -> None:
    partial = target.with_name(f'.{target.name}.{os.getpid()}.incomplete')
    shutil.copytree(source, partial, symlinks=True)
    partial.rename(target)


def delete_experiment_data(
    par_dir: pathlib.Path | str, exp_name: str
) -> list[pathlib.Path]:
    """Remove every folder of experiment ``exp_name``; the removed ones."""
    if not ranks.is_rank_zero():
        return []
    folders = _experiment_folders(par_dir, exp_name)
    for folder in folders:
        shutil.rmtree(folder)
    return folders


def rename_experiment_data(
    par_dir: pathlib.Path | str, exp_name: str, new_exp_name: str
) -> list[pathlib.Path]:
    """Rename every folder of ``exp_name`` to ``new_exp_name``.

    Returns the new folders.  Runs keep their ids, so
    ``Experiment(..., name=new_exp_name).create_run(resume=True)`` resumes
    them.

    Raises:
        FileExistsError: if ``new_exp_name`` already has data.

    """
    return _move_or_copy(
        par_dir, exp_name, new_exp_name, lambda a, b: a.rename(b)
    )


def clone_experiment_data(
    par_dir: pathlib.Path | str, exp_name: str, new_exp_name: str
) -> list[pathlib.Path]:
    """Copy every folder of ``exp_name`` as ``new_exp_name``; the copies.

    Raises:
        FileExistsError: if ``new_exp_name`` already has data.

    """
    return _move_or_copy(par_dir, exp_name, new_exp_name, _clone)

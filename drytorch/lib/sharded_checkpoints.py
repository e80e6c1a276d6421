"""Checkpoints in parts, one per rank, through torch.distributed.checkpoint.

A checkpoint of the single-file format is gathered on rank zero and written
by it alone: a model that fills several devices has to pass through one
host's memory, and every rank waits for one disk stream.  In this format
each rank writes the part of the weights and optimizer state it holds
(FSDP's shards; under DDP, torch.distributed.checkpoint spreads the
replicated tensors over the ranks by size), and rank zero adds the small
rest (positions, random streams, metric sums, hooks) as ``state.pt``.

A checkpoint is a folder ``epoch_000002.dcp`` (``epoch_000002+000010.dcp``
inside an epoch) holding::

    .metadata        where each tensor's pieces are (rank zero writes it)
    __0_0.distcp     rank zero's part
    __1_0.distcp     rank one's part, and so on
    state.pt         everything that is not a weight or an optimizer state

Every rank writes into the same temporary folder, ``.epoch_000002.dcp.
<pid>.tmp`` (rank zero's process id, so that the clean-up of a later
process knows when its writer is gone); once every part is on disk (the
save returns only when every rank's write succeeded) rank zero writes
``state.pt`` and renames the folder into place.  A folder at a final name
is therefore always complete, and the ``latest`` pointer moves after it.

The parts hold global tensors with the place of each piece, so a
checkpoint written by N ranks loads into M: each rank reads what its
shards need (resharding), and one process reads everything
(:func:`export` turns a folder into one file of the single-file format).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from drytorch.distributed import ranks

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

    from drytorch.lib.models import Model

__all__ = [
    'METADATA',
    'OLD',
    'STATE_FILE',
    'SUFFIX',
    'commit',
    'export',
    'fsync_dir',
    'has_parts',
    'load_parts',
    'parts_of',
    'read_state',
    'remove',
    'write_parts',
    'write_state',
]

SUFFIX = '.dcp'
OLD = '.old'
"""What a folder moved aside to be replaced has after its name."""
STATE_FILE = 'state.pt'
METADATA = '.metadata'

# torch.distributed.checkpoint warns at every call in one process that it
# assumes one process was meant: it was, and the warning says nothing
_ONE_PROCESS = 'torch.distributed is disabled, unavailable or uninitialized'
# the background writes' threads too (a filter made in a ``catch_warnings``
# of the training thread is gone by the time they warn)
warnings.filterwarnings('ignore', message=_ONE_PROCESS)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without the warning that one process means one process."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=_ONE_PROCESS)
        yield


def parts_of(model: Model, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What each rank writes: its weights and optimizer state (no gather).

    Under the module's plain names (torch.distributed.checkpoint's own
    helpers leave out what DDP, FSDP and ``torch.compile`` add), so that
    the parts load into another wrapping too.  An optimizer that has not
    stepped yet has no state to write: its parameter groups go in
    ``state.pt`` instead (:func:`load_parts` then builds no state either).
    """
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    parts: dict[str, Any] = {'model': get_model_state_dict(model.module)}
    if optimizer.state:
        parts['optimizer'] = get_optimizer_state_dict(model.module, optimizer)
    if ranks.is_distributed() and not model.sharded:
        return _share_of_replicas(parts)
    return parts


def _share_of_replicas(parts: dict[str, Any]) -> dict[str, Any]:
    """This rank's share of a replicated state: whole tensors, by size.

    Under DDP every rank holds every tensor.  torch.distributed.checkpoint
    would write each once anyway, but only after every rank had staged all
    of them; giving each rank its own share first halves (on 2 ranks) what
    each copies and writes.  A parameter goes with its optimizer state;
    shares are balanced greedily, largest first, the same on every rank;
    the parameter groups (no tensors) go with rank zero.
    """
    model_state = parts['model']
    optimizer_state = parts.get('optimizer', {}).get('state', {})

    def size(name: str) -> int:
        tensors = [model_state[name], *optimizer_state.get(name, {}).values()]
        return sum(
            t.numel() * t.element_size()
            for t in tensors
            if isinstance(t, torch.Tensor)
        )

    world = ranks.get_world_size()
    loads = [0] * world
    owner: dict[str, int] = {}
    for name in sorted(model_state, key=lambda n: (-size(n), n)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        owner[name] = rank
        loads[rank] += size(name)
    mine = ranks.get_rank()
    share: dict[str, Any] = {
        'model': {n: t for n, t in model_state.items() if owner[n] == mine}
    }
    if 'optimizer' in parts:
        share['optimizer'] = {
            'state': {
                n: v
                for n, v in optimizer_state.items()
                if owner.get(n) == mine
            }
        }
        if mine == 0:
            share['optimizer']['param_groups'] = parts['optimizer'][
                'param_groups'
            ]
    return share


def _writer(folder: pathlib.Path) -> Any:
    from torch.distributed.checkpoint import FileSystemWriter

    # every part is flushed to disk before the save returns (sync_files)
    return FileSystemWriter(folder, sync_files=True, overwrite=True)


def write_parts(
    parts: dict[str, Any],
    folder: pathlib.Path,
    group: ProcessGroup | None = None,
) -> None:
    """Write this rank's part into ``folder`` (collective over ``group``).

    Returns on every rank only once every rank's part is written; a rank
    whose write failed makes the call raise on every rank.
    """
    import torch.distributed.checkpoint as dcp

    with _quiet():
        dcp.save(
            parts,
            storage_writer=_writer(folder),
            process_group=group,
            no_dist=not ranks.is_distributed(),
        )


def write_state(folder: pathlib.Path, payload: bytes) -> None:
    """Write the rest of the checkpoint, serialised, into ``folder``."""
    target = folder / STATE_FILE
    with target.open('wb') as stream:
        stream.write(payload)
        stream.flush()
        os.fsync(stream.fileno())


def commit(tmp: pathlib.Path, final: pathlib.Path) -> None:
    """Rename a complete folder into place (rank zero).

    A folder cannot replace a non-empty one in one rename: an older
    checkpoint of the same position (a run rewound to it) is first moved
    to a temporary name and removed after.  Between the two renames the
    position has no checkpoint, and a loader takes the one before.
    """
    fsync_dir(tmp)
    old = None
    if final.exists():
        old = final.with_name(f'.{final.name}{OLD}.{os.getpid()}.tmp')
        remove(old)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        remove(old)


def remove(path: pathlib.Path) -> None:
    """Delete a checkpoint folder or file, whichever it is."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def fsync_dir(folder: pathlib.Path) -> None:
    """Flush a folder's entries (a rename in it) to disk, where it can."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def has_parts(folder: pathlib.Path) -> bool:
    """Whether ``folder`` holds a complete set of parts and its state."""
    return (folder / METADATA).is_file() and (folder / STATE_FILE).is_file()


def read_state(
    folder: pathlib.Path, map_location: str | torch.device = 'cpu'
) -> dict[str, Any]:
    """The checkpoint's ``state.pt``, with where its parts are.

    The weights and optimizer state stay on disk until
    :func:`load_parts` reads each rank's share of them into its model.
    """
    if not (folder / METADATA).is_file():
        raise FileNotFoundError(f'{folder} has no {METADATA}')
    state = torch.load(
        folder / STATE_FILE, map_location=map_location, weights_only=False
    )
    if not isinstance(state, dict):
        raise TypeError(f'{STATE_FILE} holds a {type(state).__name__}')
    state['parts'] = str(folder)
    return state


def load_parts(
    model: Model,
    optimizer: torch.optim.Optimizer | None,
    folder: pathlib.Path,
    *,
    with_optimizer: bool = True,
    group: ProcessGroup | None = None,
) -> None:
    """Read this rank's share of the parts into ``model`` (collective).

    On ``group`` (the default group when None), where every rank of the
    model calls it.

    Each tensor is read in the layout the model has now (its own shards
    under FSDP, whole under DDP or in one process), whatever the number
    of ranks that wrote it.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    parts: dict[str, Any] = {'model': get_model_state_dict(model.module)}
    if optimizer is not None and with_optimizer:
        parts['optimizer'] = get_optimizer_state_dict(model.module, optimizer)
    with _quiet():
        dcp.load(
            parts,
            checkpoint_id=folder,
            process_group=group,
            no_dist=not ranks.is_distributed(),
        )
    set_model_state_dict(model.module, parts['model'])
    if 'optimizer' in parts:
        set_optimizer_state_dict(model.module, optimizer, parts['optimizer'])


def export(
    folder: str | os.PathLike[str], target: str | os.PathLike[str]
) -> pathlib.Path:
    """Turn a checkpoint in parts into one file of the single-file format.

    Runs in one process, no process group needed, and reads every part:
    the file then loads into a plain module (``torch.load(target)
    ['model']['module']``) or through ``LocalCheckpoint.read``, and its
    optimizer state into the optimizer of a plain module.  The file is
    written to a temporary name and renamed, like every checkpoint.
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from drytorch.distributed.parallel import plain_optimizer_state

    source = pathlib.Path(folder)
    state = read_state(source)
    state.pop('parts')
    with tempfile.TemporaryDirectory(dir=pathlib.Path(target).parent) as tmp:
        whole = pathlib.Path(tmp) / 'parts.pt'
        with _quiet():
            dcp_to_torch_save(source, whole)
        tensors = torch.load(whole, weights_only=False)
    state['model'] = {
        'module': tensors['model'],
        'epoch': state.pop('model_epoch'),
    }
    if 'optimizer' in tensors:
        state['optimizer'] = plain_optimizer_state(tensors['optimizer'])
    out = pathlib.Path(target)
    tmp_file = out.with_name(f'.{out.name}.{os.getpid()}.tmp')
    with tmp_file.open('wb') as stream:
        torch.save(state, stream)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp_file, out)
    return out

"""Checkpoints in parts in one process: layout, housekeeping, export, errors.

The multi-rank paths (a part per rank, N ranks into M, killed ranks) are
in ``tests/distributed_training/test_dist_reshard.py`` and
``tests/preemption/test_preemption_sharded.py``; here the folder format
itself, which one process exercises the same way.
"""

from __future__ import annotations

import os
import pathlib
import warnings

import pytest
import torch

import drytorch
from drytorch import Run
from drytorch.core import exceptions
from drytorch.lib import hooks
from drytorch.lib.checkpoints import CheckpointUnreadableError, LocalCheckpoint
from tests.lib import _support


def _weights(trainer: drytorch.Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _trainer(
    folder: pathlib.Path, *, name: str = 'net', **options: object
) -> drytorch.Trainer:
    store = LocalCheckpoint(folder, run_folders=False, **options)  # type: ignore[arg-type]
    return _support.make_trainer(
        name=name, checkpoint=store, schema=drytorch.LearningSchema.adam(0.01)
    )


@pytest.mark.parametrize('background', [False, True])
def test_each_checkpoint_is_a_folder_of_parts(
    run: Run, tmp_path: pathlib.Path, background: bool
) -> None:
    trainer = _trainer(
        tmp_path, sharded=True, async_checkpoint=background, keep_last=2
    )
    trainer.post_epoch_hooks.register(hooks.SaveEveryEpochs())
    trainer.train(3)
    folder = trainer.model.checkpoint.directory
    assert sorted(p.name for p in folder.iterdir()) == [
        'epoch_000002.dcp',
        'epoch_000003.dcp',
        'latest',
    ]
    assert sorted(os.listdir(folder / 'epoch_000003.dcp')) == [
        '.metadata',
        '__0_0.distcp',
        'state.pt',
    ]
    assert (folder / 'latest').read_text().strip() == 'epoch_000003.dcp'
    assert not trainer.model.checkpoint.writing  # the last one was waited


@pytest.mark.parametrize('background', [False, True])
def test_a_checkpoint_in_parts_restores_exactly(
    run: Run, tmp_path: pathlib.Path, background: bool
) -> None:
    trainer = _trainer(tmp_path, async_checkpoint=background, sharded=True)
    trainer.train(2)
    saved = _weights(trainer)
    moments = trainer.optimizer.state_dict()['state']
    trainer.train(1)
    trainer.load_checkpoint(2)
    assert trainer.model.epoch == 2
    assert _same(_weights(trainer), saved)
    restored = trainer.optimizer.state_dict()['state']
    for index, state in moments.items():
        assert _same(restored[index], state)
    trainer.train(1)  # and training goes on from there
    assert trainer.model.epoch == 3


def test_an_optimizer_that_never_stepped_is_restored_as_it_was(
    run: Run, tmp_path: pathlib.Path
) -> None:
    trainer = _trainer(tmp_path, sharded=True)
    trainer.save_checkpoint()
    other = _trainer(tmp_path, name='other')
    other.model.checkpoint.bind('net')
    other.load_checkpoint()
    assert other.optimizer.state_dict()['state'] == {}
    assert _same(_weights(other), _weights(trainer))


def test_the_export_is_one_file_for_a_plain_module(
    run: Run, tmp_path: pathlib.Path
) -> None:
    trainer = _trainer(tmp_path, sharded=True)
    trainer.train(2)
    path = trainer.model.checkpoint.export(tmp_path / 'out' / 'net.pt')
    state = torch.load(path, weights_only=False)
    plain = _support.linear()
    plain.load_state_dict(state['model']['module'])
    assert _same(dict(plain.state_dict()), _weights(trainer))
    optimizer = torch.optim.Adam(plain.parameters())
    optimizer.load_state_dict(state['optimizer'])
    # the file is a checkpoint of the single-file format too
    reader = LocalCheckpoint(tmp_path / 'out', run_folders=False)
    assert reader.read(path)['position']['epoch'] == 2
    assert not list((tmp_path / 'out').glob('.*'))  # no temporary left


def test_single_files_and_folders_of_one_model_are_ordered_together(
    run: Run, tmp_path: pathlib.Path
) -> None:
    """A store switched to parts keeps loading the newest of either kind."""
    files = _trainer(tmp_path)
    files.train(1)
    files.save_checkpoint()
    parts = _trainer(tmp_path, name='parts', sharded=True)
    parts.model.checkpoint.bind('net')
    parts.load_checkpoint()
    parts.train(1)
    parts.save_checkpoint()
    expected = _weights(parts)
    names = [c.path.name for c in parts.model.checkpoint.available()]
    assert names == ['epoch_000001.pt', 'epoch_000002.dcp']
    files.load_checkpoint()
    assert files.model.epoch == 2
    assert _same(_weights(files), expected)


def test_an_incomplete_folder_at_a_final_name_is_skipped(
    run: Run, tmp_path: pathlib.Path
) -> None:
    """A folder copied in part (no metadata) is passed over with a warning."""
    trainer = _trainer(tmp_path, sharded=True)
    trainer.train(1)
    trainer.save_checkpoint()
    first = _weights(trainer)
    trainer.train(1)
    trainer.save_checkpoint()
    folder = trainer.model.checkpoint.directory
    (folder / 'epoch_000002.dcp' / '.metadata').unlink()
    with pytest.warns(exceptions.DryTorchWarning, match='cannot be read'):
        trainer.load_checkpoint()
    assert trainer.model.epoch == 1
    assert _same(_weights(trainer), first)
    with pytest.raises(CheckpointUnreadableError, match=r'epoch_000002\.dcp'):
        trainer.model.checkpoint.read(folder / 'epoch_000002.dcp')


def test_leftover_folders_of_killed_writes_are_removed(
    run: Run, tmp_path: pathlib.Path
) -> None:
    trainer = _trainer(tmp_path, sharded=True)
    folder = trainer.model.checkpoint.directory
    stale = folder / '.epoch_000007.dcp.999999999.tmp'
    stale.mkdir(parents=True)
    (stale / '__0_0.distcp').write_bytes(b'half')
    aside = folder / '.epoch_000001.dcp.old.999999999.tmp'
    aside.mkdir()
    foreign = folder / '.notes.999999999.tmp'
    foreign.mkdir()
    trainer.train(1)
    trainer.save_checkpoint()
    assert not stale.exists() and not aside.exists()
    assert foreign.exists()  # not a name this store writes


def test_a_position_saved_again_replaces_its_folder(
    run: Run, tmp_path: pathlib.Path
) -> None:
    trainer = _trainer(tmp_path, sharded=True)
    trainer.train(1)
    trainer.save_checkpoint()
    trainer.update_learning_rate(0.5)
    trainer.train(1)
    trainer.load_checkpoint(1)
    trainer.update_learning_rate(0.001)
    trainer.train(1)  # epoch 2 again, another state
    trainer.save_checkpoint()
    expected = _weights(trainer)
    trainer.load_checkpoint(2)
    assert _same(_weights(trainer), expected)
    folder = trainer.model.checkpoint.directory
    assert not [p for p in folder.iterdir() if p.name.startswith('.e')]


def test_a_failed_background_write_stops_at_the_next_save(
    run: Run, tmp_path: pathlib.Path
) -> None:
    """Rank zero cannot complete the folder: the next wait says so.

    The earlier checkpoint stays the one ``latest`` names, and loads.
    """
    trainer = _trainer(tmp_path, async_checkpoint=True)
    trainer.train(1)
    store = trainer.model.checkpoint
    first = _weights(trainer)
    # a folder where the state file of the next checkpoint goes
    pid = os.getpid()
    blocker = store.directory / f'.epoch_000002.dcp.{pid}.tmp' / 'state.pt'
    blocker.mkdir(parents=True)
    trainer.post_epoch_hooks.register(hooks.SaveEveryEpochs())
    with pytest.raises(exceptions.CheckpointWriteError, match=r'state\.pt'):
        trainer.train(1)
    assert (store.directory / 'latest').read_text().strip() == (
        'epoch_000001.dcp'
    )
    other = _trainer(tmp_path, name='other')
    other.model.checkpoint.bind('net')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        other.load_checkpoint()
    assert _same(_weights(other), first)


class TestOptions:
    def test_background_writes_need_parts(
        self, tmp_path: pathlib.Path
    ) -> None:
        with pytest.raises(ValueError, match='sharded=False'):
            LocalCheckpoint(tmp_path, sharded=False, async_checkpoint=True)

    def test_background_writes_turn_parts_on(
        self, tmp_path: pathlib.Path
    ) -> None:
        store = LocalCheckpoint(tmp_path, async_checkpoint=True)
        assert store.sharded and store.async_checkpoint
        assert not LocalCheckpoint(tmp_path).sharded

    @pytest.mark.parametrize('name', ['sharded', 'async_checkpoint'])
    def test_flags_must_be_bools(
        self, tmp_path: pathlib.Path, name: str
    ) -> None:
        with pytest.raises(TypeError, match=name):
            LocalCheckpoint(tmp_path, **{name: 'yes'})  # type: ignore[arg-type]

    def test_the_trainer_option_sets_the_models_store(
        self, run: Run, tmp_path: pathlib.Path
    ) -> None:
        trainer = _support.make_trainer(
            checkpoint=LocalCheckpoint(tmp_path), async_checkpoint=True
        )
        assert trainer.model.checkpoint.async_checkpoint
        assert trainer.model.checkpoint.sharded
        with pytest.raises(ValueError, match='sharded=False'):
            _support.make_trainer(
                name='b',
                checkpoint=LocalCheckpoint(tmp_path, sharded=False),
                async_checkpoint=True,
            )

    def test_export_of_nothing_is_a_clear_error(
        self, tmp_path: pathlib.Path
    ) -> None:
        store = LocalCheckpoint(tmp_path, run_folders=False)
        store.bind('net')
        with pytest.raises(exceptions.CheckpointNotFoundError):
            store.export(tmp_path / 'x.pt')

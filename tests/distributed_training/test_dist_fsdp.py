"""FSDP2 sharded training: the same numbers as DDP, half the state per rank.

Two gloo ranks train the same seeded MLP of several blocks once under DDP
and once under ``Model(parallel='fsdp', shard=(Block,))``, with a
learning-rate schedule, a plateau hook, a checkpoint every epoch, gradient
clipping, validation over uneven shards (one rank has a step without
samples) and a test with stored outputs.  Reduce-scatter and all-reduce
round differently, so the two agree to float tolerance, not bit for bit.
A preempted FSDP training resumes bit for bit; that test forks attempts of
the preemption tests' worker.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import drytorch
from drytorch import Experiment
from tests.distributed_training import _fsdp_worker as worker
from tests.helpers.kernel import isolated_kernel
from tests.helpers.multiprocess import run_distributed
from tests.preemption import _support as preempt

RTOL = 1e-5  # float32 steps, reduced in another order
MODELS = ('plain', 'clipped')


def _launch(root: pathlib.Path, parallel: str, *args: str) -> list[Any]:
    cwd = root / 'cwd'
    cwd.mkdir(parents=True)
    return (
        run_distributed(
            2,
            func=worker.train_both_ways,
            args=(str(root / 'experiments'), parallel, *args),
            env={'DRYTORCH_INIT_MODE': 'none'},
            cwd=cwd,
            timeout=240,
        )
        .check()
        .values
    )


def _plain_checkpoint(path: pathlib.Path) -> pathlib.Path:
    """A checkpoint of a plain module and its optimizer, in one process."""
    network = worker.make_network(seed=3)
    optimizer = torch.optim.Adam(network.parameters(), lr=worker.LR)
    features, labels = worker.make_dataset(16, seed=4).tensors
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(network(features), labels).backward()
        optimizer.step()
    state = {
        'model': {'module': network.state_dict(), 'epoch': 2},
        'optimizer': optimizer.state_dict(),
    }
    torch.save(state, path)
    return path


@pytest.fixture(scope='module')
def plain_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp('plain')
    return _plain_checkpoint(folder / 'plain.pt')


@pytest.fixture(scope='module')
def ddp(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each rank saw under DDP."""
    return _launch(tmp_path_factory.mktemp('ddp'), 'ddp')


@pytest.fixture(scope='module')
def fsdp(
    tmp_path_factory: pytest.TempPathFactory, plain_checkpoint: pathlib.Path
) -> list[dict[str, Any]]:
    """What each rank saw under FSDP (and the plain checkpoint it loaded)."""
    return _launch(
        tmp_path_factory.mktemp('fsdp'), 'fsdp', str(plain_checkpoint)
    )


def _close(actual: Any, expected: Any, rtol: float = RTOL) -> None:
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=1e-6)
    elif isinstance(expected, dict):
        assert set(actual) == set(expected)
        for key in expected:
            _close(actual[key], expected[key], rtol)
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            _close(a, e, rtol)
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=rtol)
    else:
        assert actual == expected


# ------------------------------------------------------------ same numbers
@pytest.mark.parametrize('name', MODELS)
def test_fsdp_trains_to_the_losses_of_ddp(
    ddp: list[dict[str, Any]], fsdp: list[dict[str, Any]], name: str
) -> None:
    for rank in (0, 1):
        ours, theirs = fsdp[rank][name], ddp[rank][name]
        assert len(ours['train']) == worker.EPOCHS
        _close(ours['train'], theirs['train'])
        _close(ours['validation'], theirs['validation'])
        assert ours['lr'] == pytest.approx(theirs['lr'], rel=1e-12)
        _close(ours['test'], theirs['test'])
    # the metrics are global: both ranks report the same
    assert fsdp[0][name]['train'] == fsdp[1][name]['train']
    assert fsdp[0][name]['validation'] == fsdp[1][name]['validation']


@pytest.mark.parametrize('name', MODELS)
def test_fsdp_ends_with_the_weights_and_outputs_of_ddp(
    ddp: list[dict[str, Any]], fsdp: list[dict[str, Any]], name: str
) -> None:
    ours, theirs = fsdp[0][name], ddp[0][name]
    _close(ours['state'], theirs['state'])
    _close(ours['optimizer'], theirs['optimizer'])
    # Test(store_outputs=True): every sample once, in data-set order
    assert ours['outputs'].shape == (worker.N_VALIDATION, worker.N_CLASSES)
    _close(ours['outputs'], theirs['outputs'])
    assert fsdp[1][name]['outputs'] is None  # gathered on rank zero


def test_gradient_clipping_uses_the_global_norm(
    ddp: list[dict[str, Any]], fsdp: list[dict[str, Any]]
) -> None:
    steps = worker.EPOCHS * worker.N_TRAIN // 2 // worker.TRAIN_BATCH
    for rank in (0, 1):
        ours, theirs = fsdp[rank]['norms'], ddp[rank]['norms']
        assert len(ours) == len(theirs) == steps
        assert ours == pytest.approx(theirs, rel=RTOL)
        assert min(ours) > worker.CLIP  # clipping acted at every step
    # one norm for the whole model, the same on both ranks
    assert fsdp[0]['norms'] == fsdp[1]['norms']
    clipped, plain = fsdp[0]['clipped']['train'], fsdp[0]['plain']['train']
    assert clipped[-1] != pytest.approx(plain[-1], rel=1e-3)


def test_mixed_precision_computes_in_bfloat16_on_float32_shards(
    ddp: list[dict[str, Any]], fsdp: list[dict[str, Any]]
) -> None:
    ours, theirs = fsdp[0]['mixed'], ddp[0]['mixed']
    assert ours['forward_dtypes'] == ['torch.bfloat16']
    assert theirs['forward_dtypes'] == ['torch.bfloat16']  # autocast
    assert ours['param_dtypes'] == ['torch.float32']
    # bfloat16 rounding: close to the float32 training, not equal
    _close(ours['train'], fsdp[0]['plain']['train'], rtol=2e-2)
    _close(ours['train'], theirs['train'], rtol=2e-2)


# ------------------------------------------------------------ sharded state
def test_each_rank_holds_about_half_of_the_state(
    fsdp: list[dict[str, Any]], ddp: list[dict[str, Any]]
) -> None:
    record = fsdp[0]['plain']
    assert record['shard_units'] == ['2', '3', '4']  # the blocks
    for kind in ('params', 'grads', 'moments'):
        locals_, fulls = [], set()
        for rank in (0, 1):
            local, full, all_dtensors = fsdp[rank]['plain'][kind]
            assert all_dtensors, kind
            assert 0.45 < local / full < 0.55, (kind, local, full)
            locals_.append(local)
            fulls.add(full)
        (full,) = fulls
        assert sum(locals_) == full  # every element on exactly one rank
        # DDP keeps the whole of it on every rank
        assert ddp[0]['plain'][kind][:2] == (full, full)


def test_a_checkpoint_under_fsdp_loads_into_a_plain_module(
    fsdp: list[dict[str, Any]], tmp_path: pathlib.Path
) -> None:
    """Written by two sharded ranks; read by plain torch, in one process."""
    record = fsdp[0]['plain']
    folder = pathlib.Path(record['checkpoint'])
    assert folder.name.endswith('.dcp')  # a sharded model's are in parts
    store = drytorch.LocalCheckpoint(folder.parent, run_folders=False)
    exported = store.export(tmp_path / 'plain.pt', folder)
    state = torch.load(exported, weights_only=False)
    network = worker.make_network(seed=9)
    network.load_state_dict(state['model']['module'], strict=True)
    for key, value in network.state_dict().items():
        assert torch.equal(value, record['state'][key]), key
    assert state['model']['epoch'] == worker.EPOCHS
    optimizer = torch.optim.Adam(network.parameters(), lr=worker.LR)
    optimizer.load_state_dict(state['optimizer'])
    _equal(optimizer.state_dict(), record['optimizer'])


def test_a_plain_checkpoint_loads_into_a_sharded_module(
    fsdp: list[dict[str, Any]], plain_checkpoint: pathlib.Path
) -> None:
    """Written in one process; loaded by two ranks and gathered back."""
    saved = torch.load(plain_checkpoint, weights_only=False)
    loaded = fsdp[0]['loaded']
    _equal(loaded['state'], dict(saved['model']['module']))
    _equal(loaded['optimizer'], saved['optimizer'])
    assert loaded['epoch'] == 2


def _equal(actual: Any, expected: Any, where: str = '') -> None:
    """Nested states equal bit for bit."""
    if isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert set(actual) == set(expected), where
        for key in expected:
            _equal(actual[key], expected[key], f'{where}.{key}')
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _equal(a, e, f'{where}[{index}]')
    else:
        assert actual == expected, where


# ------------------------------------------------------------ preemption
# two ranks, 6 training and 3 validation batches of 8 per rank and epoch,
# a sync point every 2 steps; each linear layer a unit of its own
PREEMPT_OPTIONS = (
    *('--batch-size', '8', '--val-batch-size', '8', '--sync-every', '2'),
    *('--trackers', 'csv', '--parallel', 'fsdp'),
)


@pytest.fixture(scope='module')
def zygote() -> Iterator[preempt.Zygote]:
    """The preemption tests' warm parent, which forks every attempt."""
    for module in ('sqlalchemy', 'tensorboard', 'wandb', 'yaml'):
        pytest.importorskip(  # the parent imports every tracker
            module, reason=f"{module} is missing: pip install -e '.[all]'"
        )
    parent = preempt.Zygote()
    try:
        yield parent
    finally:
        parent.close()


@pytest.fixture(scope='module')
def uninterrupted(
    zygote: preempt.Zygote, tmp_path_factory: pytest.TempPathFactory
) -> preempt.Trial:
    trial = preempt.Trial(
        zygote, tmp_path_factory.mktemp('fsdp-reference'), 2, PREEMPT_OPTIONS
    )
    assert trial.attempt() == [0, 0], trial.logs()
    return trial


@pytest.mark.parametrize(
    ('cue', 'checkpoint'),
    [
        # rank one's 9th training pass: epoch 2, read at the sync of step 4
        (('--signal-at', '9', '--signal-rank', '1'), (1, 4)),
        # rank zero's 2nd validation pass, in epoch 1
        (('--signal-at', '2', '--signal-phase', 'validate'), (1, 0)),
    ],
    ids=['mid-epoch', 'validation'],
)
def test_a_preempted_fsdp_training_resumes_bit_for_bit(
    zygote: preempt.Zygote,
    uninterrupted: preempt.Trial,
    tmp_path: pathlib.Path,
    cue: tuple[str, ...],
    checkpoint: tuple[int, int],
) -> None:
    """A real SIGUSR2; the sharded state is gathered, then scattered back."""
    trial = preempt.Trial(zygote, tmp_path, 2, PREEMPT_OPTIONS)
    assert trial.attempt(*cue) == [preempt.REQUEUE] * 2, trial.logs()
    assert preempt.checkpoint_name(*checkpoint) in trial.checkpoints()
    assert trial.attempt() == [0, 0], trial.logs()
    assert trial.registry()['attempts'] == 2
    preempt.assert_same_as(trial, uninterrupted, ['csv'])
    # the reference itself trained: not the initial weights
    final = uninterrupted.final()
    assert final['epoch'] == preempt.EPOCHS
    assert final['optimizer']['state']  # the plain format, gathered


# ------------------------------------------------------------ bad inputs
@pytest.fixture
def run(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A run in this process: no process group."""
    with isolated_kernel(monkeypatch):
        exp: Experiment[None] = Experiment(None, name='FSDP', par_dir=tmp_path)
        with exp.create_run():
            yield


@pytest.mark.usefixtures('run')
class TestOptions:
    def test_an_unknown_wrapping_names_the_allowed_ones(self) -> None:
        with pytest.raises(
            ValueError,
            match=r"parallel='zero3' is not a known wrapping\. Use None.*"
            r"'ddp'.*'fsdp'",
        ):
            drytorch.Model(worker.make_network(), parallel='zero3')

    def test_fsdp_options_need_fsdp(self) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        with pytest.raises(ValueError, match=r"applies to parallel='fsdp'"):
            drytorch.Model(worker.make_network(), shard=(worker.Block,))
        with pytest.raises(
            ValueError, match=r"is a policy of parallel='fsdp'"
        ):
            drytorch.Model(
                worker.make_network(),
                parallel='ddp',
                mixed_precision=MixedPrecisionPolicy(),
            )

    def test_shard_must_pick_module_classes_or_be_a_function(self) -> None:
        with pytest.raises(TypeError, match=r'torch\.nn\.Module subclasses'):
            drytorch.Model(
                worker.make_network(), parallel='fsdp', shard=('Block',)
            )
        with pytest.raises(TypeError, match=r'torch\.nn\.Module subclasses'):
            drytorch.Model(worker.make_network(), parallel='fsdp', shard=3)

    def test_shard_that_picks_nothing_is_refused(self) -> None:
        network = worker.make_network()
        with pytest.raises(
            ValueError, match=r'shard= picks no submodule of Sequential'
        ):
            drytorch.Model(network, parallel='fsdp', shard=nn.Conv2d)
        # refused before the registration: the module can be wrapped again
        drytorch.Model(network, parallel='fsdp', shard=worker.Block)

    def test_mixed_precision_must_be_a_bool_or_a_policy(self) -> None:
        with pytest.raises(TypeError, match=r'MixedPrecisionPolicy; got str'):
            drytorch.Model(
                worker.make_network(), parallel='fsdp', mixed_precision='bf16'
            )

    def test_fsdp_in_one_process_trains_the_plain_module(self) -> None:
        """The documented fallback: nothing to shard over one process."""
        model = drytorch.Model(
            worker.make_network(),
            parallel='fsdp',
            shard=lambda m: isinstance(m, worker.Block),
            mixed_precision=True,
        )
        assert model.parallel == 'fsdp' and not model.sharded
        assert model.shard_units == ['2', '3', '4']
        assert not model.collective_forward
        assert model.training_module() is model.module
        assert all(type(p) is nn.Parameter for p in model.module.parameters())
        assert model.autocast_dtype == torch.bfloat16
        assert not model.uses_grad_scaler
        assert model.describe()['parallel'] == 'fsdp'
        assert model.describe()['module'] == 'Sequential'
        optimizer = torch.optim.Adam(model.module.parameters())
        assert model.optimizer_state_dict(optimizer) == optimizer.state_dict()

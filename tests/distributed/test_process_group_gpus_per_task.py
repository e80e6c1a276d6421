"""Backend and device when each task sees only its own GPU(s).

CUDA is mocked (``torch.cuda.is_available``, ``device_count`` and
``set_device``) and so is ``dist.init_process_group``, because no GPU is
here: what is checked is the choice of backend and device that
``init_distributed`` makes for each rank of a node, not NCCL itself
(``tests/distributed/test_process_group_cuda.py`` and
``benchmarks/gpu_per_task_check.py`` do that on a real GPU).

Under ``srun --gpus-per-task=1`` every task sees exactly one GPU, as
``cuda:0``, while its local rank runs from 0 to n - 1; under torchrun, or
srun without GPU binding, every task sees all the node's GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.distributed as dist

from drytorch.distributed import DistributedSetupError, init_distributed
from drytorch.distributed import process_group as pg
from drytorch.distributed.slurm import SlurmEnvironment

TASKS = 4


@dataclass
class FakeCuda:
    """What the mocked CUDA and process group were asked to do."""

    visible: int
    bound: list[torch.device] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    """CUDA with ``fake.visible`` devices; set it to 0 for none."""
    fake = FakeCuda(visible=1)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: fake.visible > 0)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: fake.visible)
    monkeypatch.setattr(torch.cuda, 'set_device', fake.bound.append)

    def init_process_group(backend: str, **kwargs: Any) -> None:
        fake.groups.append({'backend': backend, **kwargs})

    monkeypatch.setattr(dist, 'init_process_group', init_process_group)
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    return fake


def srun_task(
    monkeypatch: pytest.MonkeyPatch, local_rank: int, **extra: str
) -> None:
    """This process as task ``local_rank`` of a one-node srun step."""
    variables = {
        'SLURM_JOB_ID': '4242',
        'SLURM_STEP_ID': '0',
        'SLURM_PROCID': str(local_rank),
        'SLURM_LOCALID': str(local_rank),
        'SLURM_NODEID': '0',
        'SLURM_NTASKS': str(TASKS),
        'SLURM_TASKS_PER_NODE': str(TASKS),
        'SLURM_JOB_NODELIST': 'localhost',
        **extra,
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def torchrun_worker(monkeypatch: pytest.MonkeyPatch, local_rank: int) -> None:
    """This process as worker ``local_rank`` of one node under torchrun."""
    variables = {
        'RANK': str(local_rank),
        'LOCAL_RANK': str(local_rank),
        'WORLD_SIZE': str(TASKS),
        'LOCAL_WORLD_SIZE': str(TASKS),
        'GROUP_RANK': '0',
        'MASTER_ADDR': '127.0.0.1',
        'MASTER_PORT': '29555',
        'TORCHELASTIC_RUN_ID': 'test',
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def start(fake: FakeCuda, backend: str | None = None) -> tuple[str, Any]:
    """Bring the (mocked) group up; the backend and bound device."""
    init_distributed(backend)
    group = fake.groups[-1]
    device = group['device_id']
    if device is None:
        assert not fake.bound
    else:
        assert fake.bound == [device]  # bound before the group exists
    pg.teardown_distributed()
    fake.bound.clear()
    return group['backend'], device


CUDA0 = torch.device('cuda', 0)


@pytest.mark.parametrize('local_rank', range(TASKS))
@pytest.mark.parametrize(
    'gpus',
    [
        # without device cgroups each task keeps its GPU's global index
        lambda rank: {'CUDA_VISIBLE_DEVICES': str(rank)},
        # with them every task sees its GPU as 0
        lambda rank: {'CUDA_VISIBLE_DEVICES': '0'},
    ],
    ids=['global-ids', 'cgroup'],
)
def test_one_gpu_per_task_is_nccl_on_cuda_0(
    monkeypatch: pytest.MonkeyPatch,
    fake_cuda: FakeCuda,
    local_rank: int,
    gpus: Any,
) -> None:
    srun_task(
        monkeypatch, local_rank, SLURM_STEP_GPUS='0,1,2,3', **gpus(local_rank)
    )
    assert start(fake_cuda) == ('nccl', CUDA0)
    assert pg.local_device() == CUDA0


@pytest.mark.parametrize('local_rank', range(TASKS))
@pytest.mark.parametrize('per_task', ['1', 'a100:1'])
def test_gpus_per_task_from_sbatch_is_nccl_on_cuda_0(
    monkeypatch: pytest.MonkeyPatch,
    fake_cuda: FakeCuda,
    local_rank: int,
    per_task: str,
) -> None:
    # sbatch --gpus-per-task=[type:]1 exports SLURM_GPUS_PER_TASK to steps
    srun_task(monkeypatch, local_rank, SLURM_GPUS_PER_TASK=per_task)
    assert start(fake_cuda) == ('nccl', CUDA0)


@pytest.mark.parametrize('local_rank', range(TASKS))
def test_two_gpus_per_task_use_the_first(
    monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda, local_rank: int
) -> None:
    fake_cuda.visible = 2
    srun_task(monkeypatch, local_rank, SLURM_STEP_GPUS='0,1,2,3,4,5,6,7')
    assert start(fake_cuda) == ('nccl', CUDA0)


@pytest.mark.parametrize('local_rank', range(TASKS))
@pytest.mark.parametrize('launcher', ['srun', 'torchrun'])
def test_every_gpu_visible_is_nccl_on_the_local_rank(
    monkeypatch: pytest.MonkeyPatch,
    fake_cuda: FakeCuda,
    local_rank: int,
    launcher: str,
) -> None:
    fake_cuda.visible = TASKS
    if launcher == 'srun':
        srun_task(
            monkeypatch,
            local_rank,
            SLURM_STEP_GPUS='0,1,2,3',
            CUDA_VISIBLE_DEVICES='0,1,2,3',
        )
    else:
        torchrun_worker(monkeypatch, local_rank)
    expected = torch.device('cuda', local_rank)
    assert start(fake_cuda) == ('nccl', expected)
    assert pg.local_device() == expected


@pytest.mark.parametrize('local_rank', range(TASKS))
@pytest.mark.parametrize('launcher', ['srun', 'torchrun'])
def test_a_gpu_shared_by_the_node_is_gloo(
    monkeypatch: pytest.MonkeyPatch,
    fake_cuda: FakeCuda,
    local_rank: int,
    launcher: str,
) -> None:
    # srun --gres=gpu:1 -n 4, or torchrun --nproc-per-node 4 on one GPU:
    # NCCL cannot put two ranks on one device, so all use gloo, as before
    if launcher == 'srun':
        srun_task(
            monkeypatch,
            local_rank,
            SLURM_STEP_GPUS='0',
            CUDA_VISIBLE_DEVICES='0',
        )
    else:
        torchrun_worker(monkeypatch, local_rank)
    assert start(fake_cuda) == ('gloo', None)
    assert pg.local_device() == CUDA0
    # asked for explicitly, NCCL binds a device that exists
    assert start(fake_cuda, 'nccl') == ('nccl', CUDA0)


@pytest.mark.parametrize('local_rank', [0, 3])
def test_no_gpu_is_gloo_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda, local_rank: int
) -> None:
    fake_cuda.visible = 0
    srun_task(monkeypatch, local_rank, SLURM_GPUS_PER_TASK='1')
    assert start(fake_cuda) == ('gloo', None)
    assert pg.local_device() == torch.device('cpu')


def test_nccl_without_a_gpu_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda
) -> None:
    fake_cuda.visible = 0
    srun_task(monkeypatch, 2)
    with pytest.raises(
        DistributedSetupError,
        match=r"slurm: backend 'nccl' was asked for, but rank 2 sees no "
        r'CUDA device.*backend=.gloo.',
    ):
        init_distributed('nccl')
    assert not fake_cuda.bound
    assert not fake_cuda.groups


def test_the_device_of_an_environment_not_yet_started(
    fake_cuda: FakeCuda,
) -> None:
    fake_cuda.visible = 1
    environ = {
        'SLURM_JOB_ID': '7',
        'SLURM_STEP_ID': '0',
        'SLURM_PROCID': '3',
        'SLURM_LOCALID': '3',
        'SLURM_NODEID': '0',
        'SLURM_NTASKS': '4',
        'SLURM_TASKS_PER_NODE': '4',
        'SLURM_JOB_NODELIST': 'localhost',
        'SLURM_STEP_GPUS': '4,5,6,7',
    }
    environment = SlurmEnvironment(environ)
    assert pg.local_device(environment) == CUDA0
    # the variable that decided it is quoted in later errors
    assert 'SLURM_STEP_GPUS' in environment.variables_read()

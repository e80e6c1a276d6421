"""SLURM: detection of srun tasks, the node-list parser, the master port."""

from __future__ import annotations

import pytest

from drytorch.distributed import DistributedSetupError, detect_environment
from drytorch.distributed.slurm import (
    PORT_BASE,
    PORT_SPAN,
    SlurmEnvironment,
    expand_nodelist,
    expand_tasks_per_node,
)

# A task of `srun --ntasks=5` on three nodes, as SLURM 22.05 sets it.
STEP = {
    'SLURM_JOB_ID': '4242',
    'SLURM_JOBID': '4242',
    'SLURM_STEP_ID': '0',
    'SLURM_STEPID': '0',
    'SLURM_PROCID': '3',
    'SLURM_LOCALID': '1',
    'SLURM_NODEID': '1',
    'SLURM_NTASKS': '5',
    'SLURM_STEP_NUM_TASKS': '5',
    'SLURM_TASKS_PER_NODE': '2(x2),1',
    'SLURM_STEP_TASKS_PER_NODE': '2(x2),1',
    'SLURM_JOB_NODELIST': 'gpu[07-09]',
    'SLURM_STEP_NODELIST': 'gpu[07-09]',
}
# The batch shell of `sbatch --ntasks=5`: one process, yet PROCID is set.
BATCH_SHELL = {
    'SLURM_JOB_ID': '4242',
    'SLURM_PROCID': '0',
    'SLURM_LOCALID': '0',
    'SLURM_NODEID': '0',
    'SLURM_NTASKS': '5',
    'SLURM_TASKS_PER_NODE': '2(x2),1',
    'SLURM_JOB_NODELIST': 'gpu[07-09]',
}
# The shell of `salloc --ntasks=5`.
SALLOC_SHELL = {
    'SLURM_JOB_ID': '4242',
    'SLURM_NTASKS': '5',
    'SLURM_TASKS_PER_NODE': '2(x2),1',
}


def without(environ: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k not in names}


@pytest.mark.parametrize(
    ('nodelist', 'hosts'),
    [
        ('localhost', ['localhost']),
        ('node[01-04,07]', ['node01', 'node02', 'node03', 'node04', 'node07']),
        ('a[1-2],b3', ['a1', 'a2', 'b3']),
        ('gpu-[1,3-4]-x', ['gpu-1-x', 'gpu-3-x', 'gpu-4-x']),
        ('n[8-11]', ['n8', 'n9', 'n10', 'n11']),
        ('n[098-101]', ['n098', 'n099', 'n100', 'n101']),
        ('r[1-2]n[01-02]', ['r1n01', 'r1n02', 'r2n01', 'r2n02']),
        ('a[1],b,c[5-6]', ['a1', 'b', 'c5', 'c6']),
        ('x[3]', ['x3']),
    ],
)
def test_nodelists_expand_in_order(nodelist: str, hosts: list[str]) -> None:
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize(
    'nodelist', ['', 'a[1-2', 'a1-2]', 'a[2-1]', 'a[x-y]', 'a,,b', 'a[[1]]']
)
def test_malformed_nodelists_are_refused(nodelist: str) -> None:
    with pytest.raises(ValueError, match=r'(bracket|range|empty|not)'):
        expand_nodelist(nodelist)


@pytest.mark.parametrize(
    ('text', 'counts'),
    [('4', [4]), ('2(x3),1', [2, 2, 2, 1]), ('1,3(x2)', [1, 3, 3])],
)
def test_tasks_per_node_expand(text: str, counts: list[int]) -> None:
    assert expand_tasks_per_node(text) == counts


def test_tasks_per_node_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="'2x3' is not in the form"):
        expand_tasks_per_node('2x3')


def test_a_task_of_an_srun_step() -> None:
    env = SlurmEnvironment(STEP)
    assert env.name == 'slurm'
    assert (env.rank, env.world_size) == (3, 5)
    assert (env.local_rank, env.local_world_size, env.node_rank) == (1, 2, 1)
    assert env.master_addr == 'gpu07'
    assert env.job_id == '4242'


def test_the_last_node_of_an_uneven_layout() -> None:
    environ = {**STEP, 'SLURM_PROCID': '4', 'SLURM_LOCALID': '0'}
    env = SlurmEnvironment({**environ, 'SLURM_NODEID': '2'})
    assert env.local_world_size == 1


@pytest.mark.parametrize(
    'environ',
    [
        STEP,
        without(STEP, 'SLURM_STEP_ID'),
        without(STEP, 'SLURM_JOB_ID'),
    ],
)
def test_srun_tasks_are_detected(environ: dict[str, str]) -> None:
    assert SlurmEnvironment.detected(environ)


@pytest.mark.parametrize(
    'environ',
    [
        BATCH_SHELL,
        SALLOC_SHELL,
        without(STEP, 'SLURM_STEP_ID', 'SLURM_STEPID'),
        without(STEP, 'SLURM_JOB_ID', 'SLURM_JOBID'),
        # pseudo-steps: batch, extern, interactive (as numbers and names)
        {**STEP, 'SLURM_STEP_ID': '4294967291', 'SLURM_STEPID': '0'},
        {**STEP, 'SLURM_STEP_ID': '4294967290'},
        {**STEP, 'SLURM_STEP_ID': 'interactive'},
        {**STEP, 'SLURM_STEP_ID': 'extern'},
    ],
    ids=[
        'batch-shell',
        'salloc-shell',
        'no-step',
        'no-job',
        'batch-step',
        'interactive-step',
        'interactive-name',
        'extern-name',
    ],
)
def test_shells_and_pseudo_steps_are_not_ranks(
    environ: dict[str, str],
) -> None:
    assert not SlurmEnvironment.detected(environ)
    assert detect_environment(environ).world_size == 1


def test_step_variables_win_over_job_variables() -> None:
    # srun -n 2 -w gpu08 inside a 5-task allocation on gpu[07-09]
    environ = {
        **STEP,
        'SLURM_PROCID': '1',
        'SLURM_NODEID': '0',
        'SLURM_STEP_NUM_TASKS': '2',
        'SLURM_STEP_TASKS_PER_NODE': '2',
        'SLURM_STEP_NODELIST': 'gpu08',
    }
    env = SlurmEnvironment(environ)
    assert (env.world_size, env.local_world_size) == (2, 2)
    assert env.master_addr == 'gpu08'


def test_job_variables_serve_without_step_ones() -> None:
    environ = without(
        STEP,
        'SLURM_STEP_NUM_TASKS',
        'SLURM_STEP_TASKS_PER_NODE',
        'SLURM_STEP_NODELIST',
    )
    env = SlurmEnvironment(environ)
    assert (env.world_size, env.local_world_size) == (5, 2)
    assert env.master_addr == 'gpu07'
    assert 'SLURM_NTASKS' in env.variables_read()


def test_ntasks_per_node_is_the_last_resort() -> None:
    environ = without(
        STEP, 'SLURM_STEP_TASKS_PER_NODE', 'SLURM_TASKS_PER_NODE'
    )
    environ['SLURM_NTASKS_PER_NODE'] = '2'
    assert SlurmEnvironment(environ).local_world_size == 2
    with pytest.raises(DistributedSetupError, match='TASKS_PER_NODE'):
        SlurmEnvironment(without(environ, 'SLURM_NTASKS_PER_NODE'))


def test_the_master_port_comes_from_the_job_id() -> None:
    env = SlurmEnvironment(STEP)
    assert env.master_port == PORT_BASE + 4242 % PORT_SPAN
    other = SlurmEnvironment({**STEP, 'SLURM_JOB_ID': '4243'})
    assert other.master_port == env.master_port + 1
    wrapped = SlurmEnvironment({**STEP, 'SLURM_JOB_ID': str(4242 + PORT_SPAN)})
    assert wrapped.master_port == env.master_port
    assert PORT_BASE + PORT_SPAN <= 32768  # below Linux's ephemeral ports


def test_master_port_overrides_the_job_id() -> None:
    env = SlurmEnvironment({**STEP, 'MASTER_PORT': '23456'})
    assert env.master_port == 23456


@pytest.mark.parametrize(
    ('changes', 'message'),
    [
        ({'SLURM_STEP_NUM_TASKS': 'four'}, "SLURM_STEP_NUM_TASKS='four'"),
        ({'SLURM_PROCID': '3.0'}, "SLURM_PROCID='3.0' is not a whole"),
        ({'SLURM_JOB_ID': 'abc'}, "SLURM_JOB_ID='abc' is not a job number"),
        (
            {'SLURM_STEP_NODELIST': 'gpu[07-09'},
            r"SLURM_STEP_NODELIST='gpu\[07-09' is not a SLURM node list",
        ),
        (
            {'SLURM_STEP_TASKS_PER_NODE': '2;2'},
            "tasks per node '2;2' is not in the form",
        ),
        (
            {'SLURM_NODEID': '5'},
            r'node 5 is not among the 3 nodes of SLURM_STEP_TASKS_PER_NODE',
        ),
    ],
)
def test_malformed_variables_are_quoted(
    changes: dict[str, str], message: str
) -> None:
    with pytest.raises(DistributedSetupError, match=message) as info:
        SlurmEnvironment({**STEP, **changes})
    text = str(info.value)
    assert text.startswith('slurm: ')
    assert "SLURM_JOB_ID='" in text  # the job is named in every error
    assert '. Check that ' in text


def test_a_missing_nodelist_is_named() -> None:
    environ = without(
        STEP, 'SLURM_STEP_NODELIST', 'SLURM_JOB_NODELIST', 'SLURM_NODELIST'
    )
    with pytest.raises(DistributedSetupError, match='NODELIST'):
        SlurmEnvironment(environ)

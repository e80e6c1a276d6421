"""LaunchRequest: every rule that needs no cluster, checked at creation."""

from __future__ import annotations

import pytest

from drytorch.launch import InvalidLaunchError, LaunchRequest


def test_defaults_one_task_per_gpu_else_one() -> None:
    assert LaunchRequest().ntasks_per_node == 1
    assert LaunchRequest(gpus_per_node=8).ntasks_per_node == 8
    assert LaunchRequest(nodes=4, gpus_per_node=8).world_size == 32
    assert LaunchRequest(gpus_per_node=8, tasks_per_node=1).world_size == 1


def test_more_tasks_than_gpus_says_what_to_change() -> None:
    with pytest.raises(
        InvalidLaunchError,
        match=r'tasks_per_node=4 is more than gpus_per_node=2: .* 2 task\(s\) '
        r'of each node would have none\. Set tasks_per_node=2 .* or '
        r'gpus_per_node=4',
    ):
        LaunchRequest(gpus_per_node=2, tasks_per_node=4)


@pytest.mark.parametrize(
    ('field', 'value', 'message'),
    [
        ('nodes', 0, 'nodes=0 is less than 1'),
        ('nodes', 1.5, 'nodes=1.5 is not a whole number'),
        ('gpus_per_node', -1, 'gpus_per_node=-1 is less than 0'),
        ('tasks_per_node', 0, 'tasks_per_node=0 is less than 1'),
        ('cpus_per_task', True, 'cpus_per_task=True is not a whole number'),
        ('timeout_min', 0, 'timeout_min=0 is less than 1'),
        ('cluster', 'kubernetes', "cluster='kubernetes' is not known"),
        ('mem', '32 gigs', "mem='32 gigs' is not in SLURM's form"),
        ('mem', -2, 'mem=-2 is negative'),
        ('name', '', "name='' cannot name a job"),
    ],
)
def test_bad_values_are_quoted(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(InvalidLaunchError, match=message):
        LaunchRequest(**{field: value})  # type: ignore[arg-type]


def test_signal_must_come_before_the_time_limit() -> None:
    with pytest.raises(
        InvalidLaunchError,
        match=r'signal_delay_s=120 is not shorter than the time limit '
        r'timeout_min=2 \(120 s\).*Lower signal_delay_s',
    ):
        LaunchRequest(timeout_min=2, signal_delay_s=120)


def test_local_and_debug_run_on_one_node() -> None:
    with pytest.raises(
        InvalidLaunchError,
        match=r"nodes=2 with cluster='local': this machine is one node",
    ):
        LaunchRequest(cluster='local', nodes=2)


def test_sbatch_args_cannot_override_what_submit_sets() -> None:
    with pytest.raises(
        InvalidLaunchError,
        match=r"sbatch_args sets 'nodes', .* pass nodes= instead",
    ):
        LaunchRequest(sbatch_args={'--nodes': 2})
    with pytest.raises(InvalidLaunchError, match=r'pass timeout_min='):
        LaunchRequest(sbatch_args={'time': '01:00:00'})
    with pytest.raises(InvalidLaunchError, match=r'long option names'):
        LaunchRequest(sbatch_args={'p': 'gpu'})


def test_slurm_parameters() -> None:
    request = LaunchRequest(
        nodes=4,
        gpus_per_node=8,
        cpus_per_task=10,
        mem=480,
        timeout_min=120,
        partition='gpu',
        account='proj',
        signal_delay_s=300,
        sbatch_args={'exclusive': True, 'mail_type': 'END', 'comment': None},
        srun_args=['--mpi=pmix'],
        name='digits',
    )
    assert request.slurm_parameters() == {
        'job_name': 'digits',
        'time': 120,
        'nodes': 4,
        'ntasks_per_node': 8,
        'cpus_per_task': 10,
        'gpus_per_node': 8,
        'signal_delay_s': 300,
        'partition': 'gpu',
        'account': 'proj',
        'mem': '480G',
        'additional_parameters': {
            'requeue': True,
            'exclusive': True,
            'mail-type': 'END',
        },
        'srun_args': ['--mpi=pmix'],
    }


def test_slurm_parameters_are_accepted_by_submitit(tmp_path: object) -> None:
    """submitit checks its parameters by rendering the sbatch script."""
    slurm = pytest.importorskip('submitit.slurm.slurm')
    request = LaunchRequest(
        gpus_per_node=2, mem='16G', sbatch_args={'exclusive': True}
    )
    script = slurm._make_sbatch_string(
        command='python -m x',
        folder=str(tmp_path),
        **request.slurm_parameters(),
    )
    for line in (
        '#SBATCH --ntasks-per-node=2',
        '#SBATCH --gpus-per-node=2',
        '#SBATCH --signal=USR2@90',
        '#SBATCH --requeue',
        '#SBATCH --exclusive',
        '#SBATCH --mem=16G',
        '#SBATCH --time=60',
    ):
        assert line in script.splitlines(), line


def test_local_parameters() -> None:
    request = LaunchRequest(cluster='local', tasks_per_node=2, timeout_min=5)
    assert request.local_parameters() == {
        'timeout_min': 5,
        'tasks_per_node': 2,
        'gpus_per_node': 0,
        'signal_delay_s': 90,
    }

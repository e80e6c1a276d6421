"""The multi-node SLURM test cluster is real and works.

Each node of slurm/multinode/ is a network namespace plus a UTS namespace on
this machine, with a slurmd of its own: jobs see distinct hostnames and
addresses, torch.distributed talks across them, and a node can be crashed
and brought back. The tests leave every node idle for the tests after them.
"""

from __future__ import annotations

import collections
import json
import pathlib
import subprocess
import sys
import time

import pytest

# one srun task: a gloo all_reduce across the job's nodes, MASTER_ADDR being
# the first host of the job's node list; prints what the rank saw
GLOO_TASK = """
import datetime, json, os, socket, subprocess
import torch
import torch.distributed as dist
nodes = subprocess.check_output(
    ['scontrol', 'show', 'hostnames', os.environ['SLURM_JOB_NODELIST']],
    text=True,
).split()
os.environ.update(
    MASTER_ADDR=nodes[0],
    MASTER_PORT=str(20000 + int(os.environ['SLURM_JOB_ID']) % 10000),
    RANK=os.environ['SLURM_PROCID'],
    WORLD_SIZE=os.environ['SLURM_NTASKS'],
)
dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=60))
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
print('RESULT ' + json.dumps({
    'rank': dist.get_rank(),
    'world': dist.get_world_size(),
    'host': socket.gethostname(),
    'node_id': int(os.environ['SLURM_NODEID']),
    'local_id': int(os.environ['SLURM_LOCALID']),
    'master': nodes[0],
    'sum': value.item(),
}), flush=True)
dist.destroy_process_group()
"""


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault('timeout', 60)
    return subprocess.run(
        cmd, capture_output=True, text=True, check=True, **kwargs
    )


def _node_states(partition: str) -> dict[str, str]:
    out = _run(['sinfo', '-h', '-N', '-p', partition, '-o', '%N %T']).stdout
    return dict(line.split() for line in out.splitlines() if line)


def _wait_all_idle(cluster, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = _node_states(cluster.partition)
        if set(states.values()) == {'idle'}:
            return
        time.sleep(0.2)
    pytest.fail(f'nodes not idle after {timeout}s: {states}')


def _job_state(job_id: str) -> str:
    out = _run(['sacct', '-j', job_id, '-X', '-n', '-P', '-o', 'State'])
    return out.stdout.strip()


def test_clusters_are_separate(multinode_cluster, slurm_cluster):
    def cluster_name(env: dict[str, str]) -> str:
        out = _run(['scontrol', 'show', 'config'], env=env).stdout
        (line,) = [ln for ln in out.splitlines() if 'ClusterName' in ln]
        return line.split('=', 1)[1].strip()

    one_node = {
        k: v for k, v in multinode_cluster.env().items() if k != 'SLURM_CONF'
    }
    assert cluster_name(multinode_cluster.env()) == 'multinode'
    assert cluster_name(one_node) != 'multinode'


def test_tasks_land_on_distinct_hosts(multinode_env):
    cluster = multinode_env
    pair = ','.join(cluster.nodes[:2])
    two = _run(
        ['srun', '-p', cluster.partition, '-N2', '-n2', '-w', pair, 'hostname']
    )
    assert sorted(two.stdout.split()) == ['node1', 'node2']

    if len(cluster.nodes) < 3:
        pytest.skip(f'needs 3 nodes, the cluster has {cluster.nodes}')
    five = _run(
        ['srun', '-p', cluster.partition, '-N3', '--ntasks=5', 'hostname']
    )
    per_host = collections.Counter(five.stdout.split())
    assert set(per_host) == {'node1', 'node2', 'node3'}, five.stdout
    assert sum(per_host.values()) == 5


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_gloo_all_reduce_across_nodes(
    multinode_env, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
):
    # c10d's reverse look-up of peers (no DNS in the namespaces) is harmless
    monkeypatch.setenv('TORCH_CPP_LOG_LEVEL', 'ERROR')
    task = tmp_path / 'task.py'
    task.write_text(GLOO_TASK)
    proc = _run(
        [
            'srun',
            '-p',
            multinode_env.partition,
            '-N2',
            '-w',
            'node1,node2',
            '--ntasks-per-node=2',
            sys.executable,
            str(task),
        ],
        cwd=tmp_path,
        timeout=90,
    )
    results = sorted(
        (
            json.loads(line.removeprefix('RESULT '))
            for line in proc.stdout.splitlines()
            if line.startswith('RESULT ')
        ),
        key=lambda r: r['rank'],
    )
    assert [r['rank'] for r in results] == [0, 1, 2, 3], proc.stdout
    assert {r['sum'] for r in results} == {10.0}  # 1 + 2 + 3 + 4
    assert {r['world'] for r in results} == {4}
    assert {r['master'] for r in results} == {'node1'}
    seen = {(r['host'], r['node_id'], r['local_id']) for r in results}
    assert seen == {
        ('node1', 0, 0),
        ('node1', 0, 1),
        ('node2', 1, 0),
        ('node2', 1, 1),
    }


@pytest.mark.timeout(120)
def test_crashed_node_fails_its_job_and_comes_back(multinode_env, tmp_path):
    cluster = multinode_env
    first, victim = cluster.nodes[0], cluster.nodes[-1]
    _wait_all_idle(cluster)
    job_id = _run(
        [
            'sbatch',
            '--parsable',
            '--no-requeue',
            '-p',
            cluster.partition,
            '-N2',
            '-w',
            f'{first},{victim}',
            '-o',
            str(tmp_path / 'job.out'),
            '--wrap',
            'srun sleep 300',
        ],
        cwd=tmp_path,
    ).stdout.strip()
    try:
        deadline = time.monotonic() + 30
        while _job_state(job_id) != 'RUNNING':
            assert time.monotonic() < deadline, _job_state(job_id)
            time.sleep(0.2)
        assert cluster.node_tool('pids', victim).stdout.split()

        # the host dies: every process in its namespace gets SIGKILL. Marking
        # it DOWN at once stands for slurmctld's own ~25 s of waiting.
        cluster.node_tool('crash', victim)
        assert not cluster.node_tool('pids', victim).stdout.split()
        _run(
            [
                'scontrol',
                'update',
                f'NodeName={victim}',
                'State=DOWN',
                'Reason=drytorch-test-crash',
            ]
        )
        deadline = time.monotonic() + 30
        while not _job_state(job_id).startswith('NODE_FAIL'):
            assert time.monotonic() < deadline, _job_state(job_id)
            time.sleep(0.2)
        assert _node_states(cluster.partition)[victim].startswith('down')
    finally:
        subprocess.run(['scancel', job_id], check=False, timeout=30)
        # ReturnToService=2 returns it once its slurmd registers; RESUME is
        # for the case that it does not (it fails on a node already idle)
        cluster.node_tool('start', victim)
        deadline = time.monotonic() + 5
        while _node_states(cluster.partition)[victim] != 'idle':
            if time.monotonic() > deadline:
                subprocess.run(
                    [
                        'scontrol',
                        'update',
                        f'NodeName={victim}',
                        'State=RESUME',
                    ],
                    check=False,
                    timeout=30,
                )
                break
            time.sleep(0.2)
    _wait_all_idle(cluster)
    assert cluster.node_tool('exec', victim, 'hostname').stdout == (
        f'{victim}\n'
    )

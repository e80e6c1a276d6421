"""Faults of jobs on the real multi-node SLURM cluster (slurm/multinode/).

Each node of the cluster is a namespace of this machine with a hostname,
an address and a slurmd of its own; ``node.sh`` crashes a node or cuts its
network.  The digits demo runs as a 2-node job submitted with
``drytorch.launch.submit``, and:

- a preemption signal (``scancel --signal=USR2``) and a real priority
  preemption (a job on the ``urgent`` partition that needs every node) stop
  every rank on every host at the same step, with one checkpoint; SLURM
  requeues the job, which resumes on whatever nodes it gets;
- a node that dies in training makes the ranks on the surviving node fail
  at once with a ``PeerLostError`` naming the lost host; SLURM marks the
  node down (NODE_FAIL) and requeues the job, which resumes from the last
  complete checkpoint once the node is back;
- a node that cannot reach the master makes every rank fail within the
  distributed timeout with a ``DistributedSetupError`` naming the master's
  address and port.

A resumed job ends with the metrics, weights and logs of an uninterrupted
2-node job, bit for bit, with no duplicate row and two attempts.  With 2
ranks per node (4 ranks) it ends equal to float rounding only, an expected
failure (``DDP_REBUILD`` says why).  The jobs
hold every rank before epoch ``HOLD_AT + 1`` (``_multinode.train``) until
the fault is done, so that it lands mid-training on any machine.  Node
names come from the cluster (``multinode_cluster.nodes``); every test
leaves all nodes idle.
"""

from __future__ import annotations

import collections
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from drytorch.distributed.slurm import PORT_BASE, PORT_SPAN
from drytorch.launch import JobFailedError, submit
from tests.launch import _multinode
from tests.launch._support import (
    EPOCHS,
    RunOutputs,
    assert_no_duplicate_rows,
    read_run,
    sacct_state,
    squeue_state,
    start_requeued_now,
    wait_for,
)

pytestmark = [
    pytest.mark.multinode,
    pytest.mark.slow,
    pytest.mark.timeout(300),
]

NODES = 2
HOLD_AT = 2
JOB_TIMEOUT_S = 240
Reference = tuple[dict[str, float], RunOutputs]
# why a resumed job of more than 2 ranks ends close to, not equal to, an
# uninterrupted one (the one-node tests use 2 ranks, where it cannot show)
DDP_REBUILD = (
    "DDP's first step after it is built (in a resumed attempt) all-reduces "
    'the gradients in the initial bucket layout (parameters in definition '
    'order), later steps in the rebuilt one (in gradient order): with more '
    'than 2 ranks the ring sums each element in an order that depends on '
    'its place in the bucket, so the resumed step differs in the last bit'
)


@pytest.fixture(scope='module')
def by_value() -> Iterator[Any]:
    """The job module, pickled by value into the jobs."""
    cloudpickle = pytest.importorskip('cloudpickle')
    cloudpickle.register_pickle_by_value(_multinode)
    yield _multinode
    cloudpickle.unregister_pickle_by_value(_multinode)


def _job_environment(mp: pytest.MonkeyPatch, cluster: Any) -> None:
    """What the jobs inherit: this cluster, one thread, no launcher."""
    for name in list(os.environ):
        if name.startswith(('SLURM_', 'SUBMITIT_')) or name in (
            'RANK',
            'WORLD_SIZE',
            'LOCAL_RANK',
            'MASTER_ADDR',
            'MASTER_PORT',
            'TORCHELASTIC_RUN_ID',
        ):
            mp.delenv(name)
    mp.setenv('SLURM_CONF', str(cluster.conf))
    mp.setenv('OMP_NUM_THREADS', '1')
    mp.setenv('DRYTORCH_DIST_TIMEOUT', '120')
    # c10d's reverse look-up of peers (no DNS in the namespaces): harmless
    mp.setenv('TORCH_CPP_LOG_LEVEL', 'ERROR')


@pytest.fixture
def cluster(
    multinode_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """The multi-node cluster for this test, idle before and after."""
    if len(multinode_cluster.nodes) < NODES:
        pytest.skip(f'needs {NODES} nodes: {multinode_cluster.nodes}')
    _job_environment(monkeypatch, multinode_cluster)
    _multinode.wait_idle(multinode_cluster)
    yield multinode_cluster
    _multinode.wait_idle(multinode_cluster)


@pytest.fixture(scope='module')
def reference(
    multinode_cluster: Any,
    by_value: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[int], Reference]:
    """Uninterrupted 2-node jobs of the same function, by tasks per node.

    Each gives its metrics and outputs; each is run once, when first asked.
    """
    runs: dict[int, Reference] = {}

    def run(tasks_per_node: int) -> Reference:
        if tasks_per_node in runs:
            return runs[tasks_per_node]
        root = tmp_path_factory.mktemp(f'reference-{tasks_per_node}')
        with pytest.MonkeyPatch.context() as mp:
            _job_environment(mp, multinode_cluster)
            job = _submit(
                by_value,
                root,
                multinode_cluster.partition,
                tasks_per_node=tasks_per_node,
            )
            metrics = job.result(timeout_s=JOB_TIMEOUT_S)
        outputs = read_run(root / 'exp')
        assert outputs.record['attempts'] == 1
        assert outputs.record['world_size'] == NODES * tasks_per_node
        runs[tasks_per_node] = metrics, outputs
        return runs[tasks_per_node]

    return run


def _submit(
    jobs: Any,
    root: Path,
    partition: str,
    markers: Path | None = None,
    wait: str = 'signal',
    tasks_per_node: int = 1,
    **options: Any,
) -> Any:
    return submit(
        jobs.train,
        str(root / 'exp'),
        kwargs={
            'epochs': EPOCHS,
            'hold_at': HOLD_AT,
            'markers': None if markers is None else str(markers),
            'wait': wait,
        },
        cluster='slurm',
        nodes=NODES,
        tasks_per_node=tasks_per_node,
        partition=partition,
        timeout_min=30,  # a signal this early is a preemption, not a timeout
        folder=root / 'jobs' / '%j',
        **options,
    )


def _wait_held(job: Any, markers: Path) -> dict[int, Any]:
    """Wait until every rank holds before epoch HOLD_AT + 1."""
    ranks = job.num_tasks

    def held() -> bool:
        if sacct_state(job.job_id).startswith(('FAILED', 'CANCELLED')):
            pytest.fail(f'job {job.job_id} ended:\n{_multinode.job_tail(job)}')
        return len(_multinode.read_markers(markers, 'paused')) == ranks

    wait_for(held, JOB_TIMEOUT_S, f'every rank of job {job.job_id} to hold')
    paused = _multinode.read_markers(markers, 'paused')
    # the ranks really are on different hosts, as many on each
    per_host = collections.Counter(p['host'] for p in paused.values())
    assert list(per_host.values()) == [ranks // NODES] * NODES, paused
    return paused


def _run_preempted(
    root: Path,
    cluster: Any,
    jobs: Any,
    preempt: Callable[[str], None],
    tasks_per_node: int,
) -> tuple[dict[str, float], RunOutputs, Any, dict[str, Any]]:
    markers = root / 'markers'
    markers.mkdir()
    job = _submit(
        jobs, root, cluster.partition, markers, tasks_per_node=tasks_per_node
    )
    paused = _wait_held(job, markers)
    held_with = _checkpoint_files(root)
    preempt(job.job_id)
    wait_for(
        lambda: squeue_state(job.job_id).startswith('PENDING'),
        120,
        f'job {job.job_id} to be requeued',
    )
    seen = {
        'paused': paused,
        'released': _multinode.read_markers(markers, 'released'),
        'stopped': _multinode.read_markers(markers, 'stopped'),
        # what the first attempt wrote after the hold
        'written': sorted(_checkpoint_files(root) - held_with),
        'latest': _latest(root),
    }
    # read before the resume, whose retention removes it once superseded
    seen['states'] = [_brief(root, name) for name in seen['written']]
    start_requeued_now(job.job_id)
    metrics = job.result(timeout_s=JOB_TIMEOUT_S)
    return metrics, read_run(root / 'exp'), job, seen


def _assert_stopped_together(seen: dict[str, Any], ranks: int) -> str:
    """Every rank got the signal and stopped at the same step; that step."""
    paused, released, stopped = (
        seen['paused'],
        seen['released'],
        seen['stopped'],
    )
    assert sorted(paused) == sorted(released) == sorted(stopped)
    assert sorted(stopped) == list(range(ranks))
    for rank, where in paused.items():
        # the processes that held are those that got the signal and stopped
        assert released[rank]['pid'] == where['pid'], rank
        assert stopped[rank]['pid'] == where['pid'], rank
        assert stopped[rank]['host'] == where['host'], rank
        assert released[rank]['signal'] is not None, (rank, released[rank])
        assert released[rank]['waited_s'] < _multinode.PAUSE_LIMIT_S
    (message,) = {s['message'] for s in stopped.values()}
    assert message.startswith('Preempted at epoch'), message
    return message


def _assert_resumed(
    reference: Reference,
    metrics: dict[str, float],
    outputs: RunOutputs,
    job: Any,
    exact: bool = True,
) -> None:
    """The resumed job ended as the uninterrupted one, in two attempts.

    ``exact``: the same metrics, weights and logs bit for bit; else to
    float rounding (and the test is an expected failure if they differ).
    """
    assert_no_duplicate_rows(outputs)
    record = outputs.record
    assert (record['status'], record['attempts']) == ('completed', 2)
    assert record['world_size'] == job.num_tasks
    assert record['job_key'] == f'slurm:{job.job_id}'
    log = job.stderr_path.read_text()
    assert f'slurm job {job.job_id}, attempt 2]: train finished' in log
    ref_metrics, ref_outputs = reference
    if exact:
        assert metrics == ref_metrics
        outputs.assert_same_training(ref_outputs)
        return
    assert metrics == pytest.approx(ref_metrics, rel=1e-6)
    for name, tensor in outputs.weights.items():
        assert torch.allclose(tensor, ref_outputs.weights[name], atol=1e-6)
    same = metrics == ref_metrics and all(
        torch.equal(t, ref_outputs.weights[n])
        for n, t in outputs.weights.items()
    )
    if not same:
        pytest.xfail(DDP_REBUILD)


def _checkpoint_folder(root: Path) -> Path:
    """The checkpoints of the one run of the demo under ``root``."""
    (folder,) = (root / 'exp' / 'Digits' / 'runs').glob('*/checkpoints/mlp')
    return folder


def _checkpoint_files(root: Path) -> set[str]:
    return {p.name for p in _checkpoint_folder(root).glob('*.pt')}


def _latest(root: Path) -> str:
    return (_checkpoint_folder(root) / 'latest').read_text().strip()


def _brief(root: Path, name: str) -> dict[str, Any]:
    """Position, attempt and world size of one checkpoint file."""
    state = torch.load(_checkpoint_folder(root) / name, weights_only=False)
    return {
        'position': state['position'],
        'attempt': state['run']['attempt'],
        'world_size': state['world_size'],
    }


def _assert_one_checkpoint(
    seen: dict[str, Any], message: str, ranks: int
) -> None:
    """The ranks wrote one checkpoint, at the step that they reported."""
    (written,) = seen['written']
    assert seen['latest'] == written
    (state,) = seen['states']
    assert (state['attempt'], state['world_size']) == (1, ranks)
    position = state['position']
    assert message.startswith(
        f'Preempted at epoch {position["epoch"]}, batch {position["batch"]};'
    ), (message, position)


@pytest.mark.parametrize(
    'tasks_per_node',
    [
        pytest.param(1, id='1-per-node'),
        # peers on the same host and on the other
        pytest.param(2, id='2-per-node'),
    ],
)
def test_usr2_stops_every_rank_on_every_host_at_the_same_step(
    reference: Callable[[int], Reference],
    cluster: Any,
    by_value: Any,
    tmp_path: Path,
    tasks_per_node: int,
) -> None:
    def signal(job_id: str) -> None:
        subprocess.run(
            ['scancel', '--signal=USR2', job_id], check=True, timeout=30
        )

    ranks = NODES * tasks_per_node
    expected = reference(tasks_per_node)
    metrics, outputs, job, seen = _run_preempted(
        tmp_path, cluster, by_value, signal, tasks_per_node
    )
    message = _assert_stopped_together(seen, ranks)
    # inside epoch HOLD_AT + 1, at its first sync point
    assert message.startswith(
        f'Preempted at epoch {HOLD_AT}, batch {_multinode.SYNC_EVERY};'
    ), message
    _assert_one_checkpoint(seen, message, ranks)
    log = job.stderr_path.read_text()
    assert f'requeued with `scontrol requeue {job.job_id}`' in log
    _assert_resumed(expected, metrics, outputs, job, exact=ranks <= 2)


def test_priority_preemption_of_a_two_node_job(
    reference: Callable[[int], Reference],
    cluster: Any,
    by_value: Any,
    tmp_path: Path,
) -> None:
    expected = reference(1)
    urgent: list[str] = []

    def preempt(job_id: str) -> None:
        # it needs every node of the cluster: the 2-node job must go
        proc = subprocess.run(
            [
                'sbatch',
                '--parsable',
                f'--partition={cluster.urgent}',
                f'--nodes={len(cluster.nodes)}',
                '--exclusive',
                '--output=/dev/null',
                '--wrap',
                'sleep 5',
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        urgent.append(proc.stdout.strip().split(';')[0])

    try:
        metrics, outputs, job, seen = _run_preempted(
            tmp_path, cluster, by_value, preempt, tasks_per_node=1
        )
    finally:
        for job_id in urgent:
            subprocess.run(['scancel', job_id], check=False, timeout=30)
    message = _assert_stopped_together(seen, 2)
    _assert_one_checkpoint(seen, message, 2)
    _assert_resumed(expected, metrics, outputs, job)
    assert sacct_state(urgent[0]) == 'COMPLETED'


def test_a_node_that_dies_fails_the_job_which_resumes_when_requeued(
    reference: Callable[[int], Reference],
    cluster: Any,
    by_value: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = reference(1)
    timeout_s = 60
    monkeypatch.setenv('DRYTORCH_DIST_TIMEOUT', str(timeout_s))
    markers = tmp_path / 'markers'
    markers.mkdir()
    # requeue allowed, as submit() always asks
    job = _submit(by_value, tmp_path, cluster.partition, markers, wait='go')
    victim = None
    try:
        paused = _wait_held(job, markers)
        survivor = paused[0]['host']
        (victim,) = {p['host'] for p in paused.values()} - {survivor}
        lost = sorted(r for r, p in paused.items() if p['host'] == victim)
        # the checkpoint of epoch HOLD_AT is complete; then the host dies:
        # every process in it gets SIGKILL, and the others go on training
        cluster.node_tool('crash', victim)
        crashed_at = time.monotonic()
        (markers / _multinode.GO).touch()
        err = job.log_paths()[0][1]

        def failed() -> bool:
            return err.exists() and 'PeerLostError' in err.read_text()

        wait_for(failed, timeout_s + 30, f'rank 0 of {job.job_id} to fail')
        failed_after = time.monotonic() - crashed_at
        assert failed_after < timeout_s
        text = err.read_text()
        assert (
            f'PeerLostError: rank 0 on {survivor}: training mlp in epoch '
            f'{HOLD_AT + 1} (of {EPOCHS}) failed because its peer on '
            f'{victim} (ranks there: {", ".join(map(str, lost))})'
        ) in text, text
        # slurmctld marks it DOWN ~25 s after the crash; this does it now
        _multinode.scontrol(
            'update', f'NodeName={victim}', 'State=DOWN', 'Reason=test-crash'
        )
        assert _multinode.node_states(cluster.partition)[victim].startswith(
            'down'
        )
        # NODE_FAIL requeues the batch job
        wait_for(
            lambda: squeue_state(job.job_id).startswith('PENDING'),
            60,
            f'job {job.job_id} to be requeued after NODE_FAIL',
        )
        assert 'NODE_FAIL' in _multinode.sacct_history(job.job_id)
        _multinode.restore_node(cluster, victim)
        victim = None
        start_requeued_now(job.job_id)
        # rank 0's result file is still the error of the first attempt
        # until the second ends: wait for SLURM, not for the file
        wait_for(
            lambda: sacct_state(job.job_id) == 'COMPLETED',
            JOB_TIMEOUT_S,
            f'job {job.job_id} to complete',
        )
    finally:
        if victim is not None:
            subprocess.run(['scancel', job.job_id], check=False, timeout=30)
            _multinode.restore_node(cluster, victim)
    metrics = job.result(timeout_s=60)
    outputs = read_run(tmp_path / 'exp')
    _assert_resumed(expected, metrics, outputs, job)
    log = job.stderr_path.read_text()
    # from the last complete checkpoint: the one of epoch HOLD_AT
    second = log[log.index('attempt 2]: train starts') :]
    assert (
        f'Loaded checkpoint of epoch {HOLD_AT} from ' in second
        and f'epoch_{HOLD_AT:06d}.pt' in second
    ), second
    assert f'Training mlp (epochs {HOLD_AT + 1} to {EPOCHS})' in second
    attempts = _multinode.attempts(tmp_path / 'exp')
    assert [a['status'] for a in attempts] == ['failed', 'completed']


def test_a_node_that_cannot_reach_the_master_fails_in_time(
    cluster: Any,
    by_value: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timeout_s = 20
    monkeypatch.setenv('DRYTORCH_DIST_TIMEOUT', str(timeout_s))
    head, other = cluster.nodes[:NODES]
    address = subprocess.run(
        ['getent', 'hosts', head],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()[0]
    # the second node reaches every port of the master's host but those of
    # drytorch's rendezvous (derived from the job id); slurmd, srun's I/O
    # and the rest stay open
    rule = [
        'ip',
        'rule',
        'add',
        'to',
        address,
        'ipproto',
        'tcp',
        'dport',
        f'{PORT_BASE}-{PORT_BASE + PORT_SPAN - 1}',
        'unreachable',
    ]
    cluster.node_tool('exec', other, *rule)
    try:
        job = _submit(
            by_value,
            tmp_path,
            cluster.partition,
            sbatch_args={'nodelist': f'{head},{other}'},
        )
        job.result_grace_s = 5.0
        with pytest.raises(JobFailedError, match='DistributedSetupError'):
            job.result(timeout_s=JOB_TIMEOUT_S)
    finally:
        rule[2] = 'del'
        cluster.node_tool('exec', other, *rule)
    port = PORT_BASE + int(job.job_id) % PORT_SPAN
    for rank, (_, err) in enumerate(job.log_paths()):
        text = err.read_text()
        assert (
            'DistributedSetupError: slurm: the gloo process group of '
            f'{NODES} ranks did not come up within {timeout_s:g} s at '
            f'{head}:{port} (this is rank {rank})'
        ) in text, text
        assert f'that {head}:{port} is reachable from every node' in text
    # not requeued: a job that cannot assemble would fail again
    wait_for(
        lambda: sacct_state(job.job_id) == 'FAILED',
        60,
        f'job {job.job_id} to end as FAILED',
    )
    assert _multinode.sacct_history(job.job_id) == ['FAILED']
    # rank 0 gives up at the timeout; rank 1's last try to connect can
    # come a few seconds after it (torch's back-off between tries)
    elapsed = _multinode.sacct_field(job.job_id, 'ElapsedRaw')
    assert timeout_s <= int(elapsed) < 2 * timeout_s, elapsed

"""Jobs on the real multi-node SLURM cluster (slurm/multinode/).

Each node is a namespace of this machine with a hostname, an address and a
slurmd of its own, so the ranks of these jobs really are on different hosts
and talk over the network.  The digits demo trains on

- 4 ranks on 2 nodes, submitted with ``submit(nodes=2, tasks_per_node=2)``;
- 5 ranks on 3 nodes, ``submit(nodes=3, tasks=5)``: 2, 2 and 1 per node;
- 4 ranks on 2 nodes through the sbatch srun template, the torchrun
  multi-node template and ``launchers/torchrun_multinode.sh``;

and every rank reports what drytorch detected (launcher, global, local and
node rank, local world size, master) and which host it ran on.  The
metrics and final weights equal those of the same number of ranks on ONE
node: the same function submitted with ``tasks_per_node=N`` to the one-node
cluster (slurm/cluster, 8 CPUs).  That reference is "N ranks on one node"
through the very same path (srun tasks, SLURM's variables, gloo) that the
multi-node job takes, only with one host; ``cluster='local'`` would differ
in more than the node count (torchrun-style variables, another launcher).
The demo's data order depends on (seed, epoch, rank, world size) only and
its metrics are global, so where the ranks run must not change them.

Only global rank zero writes: an audit hook in every rank records each
write-like file operation under the experiments' folder (rank zero's list
must hold every file of the run folder, the others' lists must be empty),
and the folder holds the same files as the one-node run's.

The module's job functions are pickled by value (``by_value``): the jobs
need not import tests/.  The ``tasks=`` request rules at the end need no
cluster.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from drytorch.launch import InvalidLaunchError, LaunchRequest, submit
from tests.launch._support import (
    EPOCHS,
    REPO,
    RunOutputs,
    assert_no_duplicate_rows,
    read_run,
    sacct_state,
    wait_for,
)

JOB_TIMEOUT_S = 240
TEMPLATES = REPO / 'slurm' / 'templates'
# the master port that drytorch derives from the job id (slurm.py)
PORT_BASE, PORT_SPAN = 15000, 17000

# one rank's report, written by PROBE (a script, for the sbatch templates)
PROBE = """
import json, os, pathlib, socket, sys
from drytorch.distributed import detect_environment
env = detect_environment()
out = pathlib.Path(os.environ['PROBE_DIR'])
out.joinpath(f'{env.rank}.json').write_text(json.dumps({
    'host': socket.gethostname(),
    'launcher': env.name,
    'rank': env.rank,
    'world_size': env.world_size,
    'local_rank': env.local_rank,
    'local_world_size': env.local_world_size,
    'node_rank': env.node_rank,
    'master_addr': env.master_addr,
    'master_port': env.master_port,
    'slurm_procid': os.environ.get('SLURM_PROCID'),
    'nodelist': os.environ.get('SLURM_JOB_NODELIST'),
}))
from drytorch.demo import main
sys.exit(main(sys.argv[1:]))
"""


# --- what the jobs run (pickled by value) --------------------------------


class WriteWatcher:
    """Every write-like file operation of this process under a folder.

    An audit hook sees what the process does to the file system, whoever
    does it (drytorch, a tracker, torch.save, a lock), so a rank that
    writes nothing records nothing.
    """

    EVENTS = frozenset(
        {
            'os.mkdir',
            'os.rename',
            'os.remove',
            'os.rmdir',
            'os.truncate',
            'os.symlink',
            'os.link',
            'os.utime',
            'shutil.copyfile',
            'shutil.move',
            'shutil.rmtree',
        }
    )

    def __init__(self, folder: str) -> None:
        self.root = os.path.abspath(folder)
        self.writes: list[tuple[str, str]] = []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event == 'open':
            path, mode, flags = args
            writing = (
                any(c in mode for c in 'wax+')
                if isinstance(mode, str)
                else bool(
                    int(flags or 0)
                    & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND)
                )
            )
            if writing:
                self._record(event, path)
        elif event in self.EVENTS:
            for arg in args[:2]:  # a rename's source and destination
                self._record(event, arg)

    def _record(self, event: str, path: Any) -> None:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return
        text = os.path.abspath(os.fsdecode(path))
        if text == self.root or text.startswith(self.root + os.sep):
            self.writes.append((event, text))


def report_and_train(par_dir: str, epochs: int) -> dict[str, Any]:
    """Train the demo; return where this rank ran, what it saw and wrote."""
    from drytorch.demo import DemoConfig, train_digits
    from drytorch.distributed import detect_environment

    watcher = WriteWatcher(par_dir)
    env = detect_environment()
    seen = {
        'host': socket.gethostname(),
        'launcher': env.name,
        'rank': env.rank,
        'world_size': env.world_size,
        'local_rank': env.local_rank,
        'local_world_size': env.local_world_size,
        'node_rank': env.node_rank,
        'master_addr': env.master_addr,
        'master_port': env.master_port,
        'job_id': os.environ.get('SLURM_JOB_ID'),
        'nodelist': os.environ.get('SLURM_JOB_NODELIST'),
        'step_tasks_per_node': os.environ.get('SLURM_STEP_TASKS_PER_NODE'),
    }
    metrics = train_digits(DemoConfig(epochs=epochs), par_dir)
    return {**seen, 'metrics': metrics, 'writes': watcher.writes}


# --- fixtures --------------------------------------------------------------


@pytest.fixture(scope='module')
def by_value() -> Iterator[Any]:
    """This module, pickled by value into the jobs."""
    cloudpickle = pytest.importorskip('cloudpickle')
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield module
    cloudpickle.unregister_pickle_by_value(module)


@pytest.fixture
def multinode(
    single_threaded: None,
    multinode_env: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    """The multi-node cluster for this test, one torch thread per rank.

    ``single_threaded`` drops every SLURM_* variable, SLURM_CONF included,
    so SLURM_CONF is set again after it.
    """
    monkeypatch.setenv('SLURM_CONF', str(multinode_env.conf))
    # c10d's reverse look-up of peers (no DNS in the namespaces): harmless
    monkeypatch.setenv('TORCH_CPP_LOG_LEVEL', 'ERROR')
    monkeypatch.setenv('PYTHON', sys.executable)
    return multinode_env


class Reference:
    """Runs of the demo with N ranks on the one-node cluster, by N."""

    def __init__(self, root: pathlib.Path, partition: str, jobs: Any):
        self.root = root
        self.partition = partition
        self.jobs = jobs
        self.runs: dict[int, tuple[list[dict[str, Any]], RunOutputs]] = {}

    def __call__(self, ranks: int) -> tuple[list[dict[str, Any]], RunOutputs]:
        if ranks not in self.runs:
            self.runs[ranks] = self._run(ranks)
        return self.runs[ranks]

    def _run(self, ranks: int) -> tuple[list[dict[str, Any]], RunOutputs]:
        root = self.root / f'{ranks}-ranks'
        with pytest.MonkeyPatch.context() as mp:
            for name in list(os.environ):  # the one-node cluster, no job's
                if name.startswith(('SLURM_', 'SUBMITIT_')):
                    mp.delenv(name)
            mp.setenv('OMP_NUM_THREADS', '1')
            mp.setenv('DRYTORCH_DIST_TIMEOUT', '120')
            job = submit(
                self.jobs.report_and_train,
                str(root / 'exp'),
                EPOCHS,
                cluster='slurm',
                tasks_per_node=ranks,
                partition=self.partition,
                timeout_min=10,
                folder=root / 'jobs' / '%j',
            )
            results = job.results(timeout_s=JOB_TIMEOUT_S)
        assert {r['host'] for r in results} == {socket.gethostname()}
        assert [r['local_world_size'] for r in results] == [ranks] * ranks
        return results, read_run(root / 'exp')

    def tree(self, ranks: int) -> set[str]:
        """The files of the N-rank run's folder."""
        self(ranks)
        return _tree(self.root / f'{ranks}-ranks' / 'exp')


@pytest.fixture(scope='module')
def one_node(
    slurm_cluster: Any,
    by_value: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Reference:
    """N ranks on one node of the one-node cluster (8 CPUs: up to 8)."""
    return Reference(
        tmp_path_factory.mktemp('one-node'), slurm_cluster.partition, by_value
    )


# --- checks ----------------------------------------------------------------


def _hostnames(nodelist: str) -> list[str]:
    """SLURM's own expansion of a node list, in its order."""
    out = subprocess.run(
        ['scontrol', 'show', 'hostnames', nodelist],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.split()


def _tree(par_dir: pathlib.Path) -> set[str]:
    """Every path under the folder, the run id written as <run>."""
    record = json.loads((par_dir / 'Digits' / 'registry.json').read_text())
    (run,) = [r['run_id'] for r in record['runs']]
    return {
        str(path.relative_to(par_dir)).replace(run, '<run>')
        for path in par_dir.rglob('*')
    }


def _assert_same_training(
    outputs: RunOutputs, reference: RunOutputs, ranks: int
) -> None:
    """Final weights and every logged metric equal, to float tolerance."""
    assert outputs.weights.keys() == reference.weights.keys()
    for name, tensor in outputs.weights.items():
        assert torch.allclose(
            tensor, reference.weights[name], rtol=1e-5, atol=1e-7
        ), name
    assert outputs.csv.keys() == reference.csv.keys()
    for name, text in outputs.csv.items():
        rows = [line.split(',') for line in text.splitlines()]
        ref = [line.split(',') for line in reference.csv[name].splitlines()]
        assert [r[:3] for r in rows] == [r[:3] for r in ref], name
        values = [float(v) for r in rows[1:] for v in r[3:]]
        ref_values = [float(v) for r in ref[1:] for v in r[3:]]
        assert values == pytest.approx(ref_values, rel=1e-6, abs=1e-9), name
    assert_no_duplicate_rows(outputs)
    record = outputs.record
    assert (record['status'], record['attempts']) == ('completed', 1)
    assert record['world_size'] == ranks


def _assert_placement(
    ranks: list[dict[str, Any]], launcher: str, per_node: list[int]
) -> None:
    """Ranks in order, node by node, with local ranks 0..k-1 on each.

    ``per_node`` is how many ranks each node (by node rank) must hold; it is
    compared with where the processes really ran (their hostnames).
    """
    world = sum(per_node)
    assert [r['rank'] for r in ranks] == list(range(world))
    assert {(r['launcher'], r['world_size']) for r in ranks} == {
        (launcher, world)
    }
    by_node: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in ranks:
        by_node[r['node_rank']].append(r)
    assert sorted(by_node) == list(range(len(per_node)))
    hosts = []
    for node, members in sorted(by_node.items()):
        (host,) = {r['host'] for r in members}
        hosts.append(host)
        assert len(members) == per_node[node], (node, members)
        assert sorted(r['local_rank'] for r in members) == list(
            range(per_node[node])
        )
        assert {r['local_world_size'] for r in members} == {per_node[node]}
    assert len(set(hosts)) == len(per_node), hosts  # one host per node
    ran_on = collections.Counter(r['host'] for r in ranks)
    assert [ran_on[h] for h in hosts] == per_node
    # the master is the first host of the job's node list, for every rank
    first = _hostnames(ranks[0]['nodelist'])[0]
    assert hosts[0] == first
    assert {r['master_addr'] for r in ranks} == {first}
    assert len({r['master_port'] for r in ranks}) == 1


def _assert_only_rank_zero_wrote(
    ranks: list[dict[str, Any]], par_dir: pathlib.Path, reference: set[str]
) -> None:
    tree = _tree(par_dir)
    assert tree == reference  # the same files as the one-node run's
    for other in ranks[1:]:
        assert other['writes'] == [], (other['rank'], other['writes'][:5])
    written = {path for _, path in ranks[0]['writes']}
    files = {p for p in par_dir.rglob('*') if not p.is_dir()}
    assert files, par_dir
    missing = [str(p) for p in files if str(p) not in written]
    assert not missing, f'files rank 0 did not write: {missing}'
    kinds = {pathlib.Path(p).name for p in written}
    assert {'registry.json', 'Trainer.csv', 'epoch_000005.pt'} <= kinds


def _sbatch(
    template: pathlib.Path,
    tmp_path: pathlib.Path,
    options: list[str],
    command: list[str],
) -> tuple[str, str]:
    """Submit a template, wait for the end; its job id and output."""
    log = tmp_path / 'job.out'
    proc = subprocess.run(
        [
            'sbatch',
            '--parsable',
            '--time=10',
            f'--output={log}',
            f'--chdir={tmp_path}',
            *options,
            str(template),
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    job_id = proc.stdout.strip().split(';')[0]
    ended = ('COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL')
    wait_for(
        lambda: sacct_state(job_id).startswith(ended),
        JOB_TIMEOUT_S,
        f'job {job_id} to end',
    )
    text = log.read_text() if log.exists() else ''
    assert sacct_state(job_id) == 'COMPLETED', text
    return job_id, text


def _probe(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """The probe script, and the folder its ranks report in."""
    script = tmp_path / 'probe.py'
    script.write_text(PROBE)
    reports = tmp_path / 'ranks'
    reports.mkdir()
    return script, reports


def _read_reports(reports: pathlib.Path) -> list[dict[str, Any]]:
    found = [json.loads(p.read_text()) for p in reports.glob('*.json')]
    return sorted(found, key=lambda r: r['rank'])


# --- submit() ------------------------------------------------------------


@pytest.mark.multinode
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ('nodes', 'ranks', 'per_node'),
    [
        pytest.param(2, 4, [2, 2], id='4-on-2'),
        # tasks= the whole job: SLURM spreads it 2, 2, 1
        pytest.param(3, 5, [2, 2, 1], id='5-on-3'),
    ],
)
def test_submit_trains_across_nodes_like_one_node(
    multinode: Any,
    by_value: Any,
    one_node: Reference,
    tmp_path: pathlib.Path,
    nodes: int,
    ranks: int,
    per_node: list[int],
) -> None:
    if len(multinode.nodes) < nodes:
        pytest.skip(f'needs {nodes} nodes, the cluster has {multinode.nodes}')
    ref_ranks, ref_outputs = one_node(ranks)
    even = ranks % nodes == 0
    job = submit(
        by_value.report_and_train,
        str(tmp_path / 'exp'),
        EPOCHS,
        cluster='slurm',
        nodes=nodes,
        tasks_per_node=ranks // nodes if even else None,
        tasks=None if even else ranks,
        partition=multinode.partition,
        timeout_min=10,
        folder=tmp_path / 'jobs' / '%j',
    )
    assert job.num_tasks == ranks
    results = job.results(timeout_s=JOB_TIMEOUT_S)

    _assert_placement(results, 'slurm', per_node)
    # SLURM's own account of the step says the same: 2(x2), 2(x2),1
    assert {r['step_tasks_per_node'] for r in results} == {
        _slurm_counts(per_node)
    }
    job_id = job.job_id
    assert {r['job_id'] for r in results} == {job_id}
    assert results[0]['master_port'] == PORT_BASE + int(job_id) % PORT_SPAN

    # every rank saw the same global metrics, those of N ranks on one node
    metrics = results[0]['metrics']
    assert metrics['Accuracy'] > 0.8
    assert all(r['metrics'] == metrics for r in results)
    assert metrics == pytest.approx(
        ref_ranks[0]['metrics'], rel=1e-6, abs=1e-9
    )
    par_dir = tmp_path / 'exp'
    outputs = read_run(par_dir)
    _assert_same_training(outputs, ref_outputs, ranks)
    assert outputs.record['job_key'] == f'slurm:{job_id}'
    _assert_only_rank_zero_wrote(results, par_dir, one_node.tree(ranks))


def _slurm_counts(counts: list[int]) -> str:
    """Tasks per node as SLURM compresses them: [2, 2, 1] is 2(x2),1."""
    groups: list[list[int]] = []
    for count in counts:
        if groups and groups[-1][0] == count:
            groups[-1][1] += 1
        else:
            groups.append([count, 1])
    return ','.join(
        f'{count}(x{times})' if times > 1 else str(count)
        for count, times in groups
    )


# --- sbatch templates and the torchrun launcher ----------------------------


@pytest.mark.multinode
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_srun_template_runs_four_ranks_on_two_hosts(
    multinode: Any, one_node: Reference, tmp_path: pathlib.Path
) -> None:
    ref_ranks, ref_outputs = one_node(4)
    script, reports = _probe(tmp_path)
    job_id, log = _sbatch(
        TEMPLATES / 'srun_multi_node.sbatch',
        tmp_path,
        [
            f'--partition={multinode.partition}',
            '--nodes=2',
            '--ntasks-per-node=2',
            '--cpus-per-task=1',
            f'--export=ALL,PROBE_DIR={reports}',
        ],
        [str(script), '--epochs', str(EPOCHS), '--par-dir', 'exp'],
    )
    ranks = _read_reports(reports)
    _assert_placement(ranks, 'slurm', [2, 2])
    assert [r['slurm_procid'] for r in ranks] == ['0', '1', '2', '3']
    assert ranks[0]['master_port'] == PORT_BASE + int(job_id) % PORT_SPAN
    assert f'4 tasks on 2 node(s) {ranks[0]["nodelist"]}' in log
    accuracy = ref_ranks[0]['metrics']['Accuracy']
    assert 'Digits demo finished (4 process(es)' in log
    assert f'test accuracy: {accuracy:.2%}' in log
    assert 'training ended with status 0' in log
    outputs = read_run(tmp_path / 'exp')
    _assert_same_training(outputs, ref_outputs, 4)
    assert outputs.record['job_key'] == f'slurm:{job_id}'
    assert _tree(tmp_path / 'exp') == one_node.tree(4)


@pytest.mark.multinode
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_template_runs_two_agents_on_two_hosts(
    multinode: Any, one_node: Reference, tmp_path: pathlib.Path
) -> None:
    ref_ranks, ref_outputs = one_node(4)
    script, reports = _probe(tmp_path)
    job_id, log = _sbatch(
        TEMPLATES / 'torchrun_multi_node.sbatch',
        tmp_path,
        [
            f'--partition={multinode.partition}',
            '--nodes=2',
            '--cpus-per-task=2',
            f'--export=ALL,PROBE_DIR={reports},NPROC_PER_NODE=2',
        ],
        [str(script), '--epochs', str(EPOCHS), '--par-dir', 'exp'],
    )
    ranks = _read_reports(reports)
    # torchrun's variables win over SLURM's, which describe the agents
    _assert_placement(ranks, 'torchrun', [2, 2])
    # one agent per node: SLURM's task id is the node's, not the rank's
    assert [r['slurm_procid'] for r in ranks] == ['0', '0', '1', '1']
    port = PORT_BASE + int(job_id) % PORT_SPAN
    nodelist = ranks[0]['nodelist']
    head = _hostnames(nodelist)[0]
    assert (
        f'2 node(s) {nodelist} x 2 processes, rendezvous {head}:{port}' in log
    )
    accuracy = ref_ranks[0]['metrics']['Accuracy']
    assert 'Digits demo finished (4 process(es)' in log
    assert f'test accuracy: {accuracy:.2%}' in log
    assert 'training ended with status 0' in log
    outputs = read_run(tmp_path / 'exp')
    _assert_same_training(outputs, ref_outputs, 4)
    assert _tree(tmp_path / 'exp') == one_node.tree(4)


@pytest.mark.multinode
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_launcher_in_an_allocation(
    multinode: Any, one_node: Reference, tmp_path: pathlib.Path
) -> None:
    _, ref_outputs = one_node(4)
    proc = subprocess.run(
        [
            'salloc',
            f'--partition={multinode.partition}',
            '--nodes=2',
            '--time=10',
            'bash',
            str(REPO / 'launchers' / 'torchrun_multinode.sh'),
            '--epochs',
            str(EPOCHS),
            '--par-dir',
            str(tmp_path / 'exp'),
        ],
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
        check=False,
        env={**os.environ, 'NPROC': '2'},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'Digits demo finished (4 process(es)' in proc.stdout
    _assert_same_training(read_run(tmp_path / 'exp'), ref_outputs, 4)


# --- tasks=: the request, without a cluster --------------------------------


def test_tasks_spread_over_the_nodes() -> None:
    request = LaunchRequest(nodes=3, tasks=5)
    assert (request.world_size, request.ntasks_per_node) == (5, 2)
    assert request.uneven
    params = request.slurm_parameters()
    assert params['nodes'] == 3
    assert params['ntasks_per_node'] == 2  # the most on a node
    assert params['additional_parameters']['ntasks'] == 5
    assert params['setup'] == ['unset SLURM_NTASKS_PER_NODE']
    assert '3 node(s), 5 task(s) (at most 2 per node)' in request.describe()
    even = LaunchRequest(nodes=2, tasks=4)
    assert (even.world_size, even.ntasks_per_node, even.uneven) == (
        4,
        2,
        False,
    )
    assert 'ntasks' not in even.slurm_parameters()['additional_parameters']
    local = LaunchRequest(cluster='local', tasks=3)
    assert local.local_parameters()['tasks_per_node'] == 3


def test_tasks_are_rendered_by_submitit(tmp_path: pathlib.Path) -> None:
    slurm = pytest.importorskip('submitit.slurm.slurm')
    script = slurm._make_sbatch_string(
        command='python -m x',
        folder=str(tmp_path),
        **LaunchRequest(nodes=3, tasks=5).slurm_parameters(),
    )
    lines = script.splitlines()
    for line in (
        '#SBATCH --nodes=3',
        '#SBATCH --ntasks=5',
        '#SBATCH --ntasks-per-node=2',
        'unset SLURM_NTASKS_PER_NODE',
    ):
        assert line in lines, line
    assert lines.index('unset SLURM_NTASKS_PER_NODE') < next(
        i for i, line in enumerate(lines) if line.startswith('srun ')
    )


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        (
            {'nodes': 2, 'tasks': 4, 'tasks_per_node': 2},
            r'tasks=4 and tasks_per_node=2 both set the number of ranks',
        ),
        (
            {'nodes': 3, 'tasks': 2},
            r'tasks=2 on nodes=3: every node needs at least one task',
        ),
        ({'tasks': 0}, r'tasks=0 is less than 1'),
        (
            {'nodes': 2, 'tasks': 5, 'gpus_per_node': 2},
            r'tasks=5 on nodes=2 puts up to 3 tasks on a node, more than '
            r'gpus_per_node=2.*at most tasks=4, or nodes=3',
        ),
        ({'sbatch_args': {'ntasks': 5}}, r'pass tasks= \(or nodes='),
    ],
)
def test_bad_task_counts_say_what_to_change(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidLaunchError, match=message):
        LaunchRequest(**kwargs)


def test_a_new_job_forgets_a_finished_job_with_its_id(
    tmp_path: pathlib.Path,
) -> None:
    """submitit caches finished jobs by id, for every cluster at once."""
    submitit = pytest.importorskip('submitit')
    from drytorch.launch import submitting

    handle = submitit.SlurmJob(folder=tmp_path, job_id='424242')
    watcher = handle.watcher
    # what an earlier job 424242 (another cluster, or before a cold start
    # reset the ids) left in this process
    watcher._finished.add('424242')
    watcher._info_dict['424242'] = {'State': 'COMPLETED'}
    try:
        assert watcher.get_state('424242', mode='cache') == 'COMPLETED'
        submitting._forget_earlier_job(handle)
        assert '424242' not in watcher._finished
        assert watcher.get_state('424242', mode='cache') == 'UNKNOWN'
    finally:
        watcher._finished.discard('424242')
        watcher._info_dict.pop('424242', None)
        watcher._registered.discard('424242')

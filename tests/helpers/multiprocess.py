"""Run a script or a function in N real processes, as torchrun would.

Two launchers share one implementation:

- :func:`run_distributed` gives each process the variables that torchrun
  exports (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``,
  ``GROUP_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` on a free port,
  ``TORCHELASTIC_RUN_ID``...), so that code under test brings up a real
  gloo process group exactly as it would under ``torchrun``.
- :func:`run_parallel` starts N independent processes (no launcher
  variables; each gets ``TEST_PROCESS_INDEX`` and ``TEST_PROCESS_COUNT``),
  for tests of concurrent access to shared files.

Either runs a script (``script=path``) or a function (``func=callable``): a
module-level function of any importable file, test modules included; its
arguments and return value travel by pickle.  Every process gets its own
stdout and stderr (collected in :class:`ProcessResult`), inherited launcher
variables are removed first, the repository root is put on
``PYTHONPATH``, and the whole launch has a deadline after which every
process still running is killed.

Typical use::

    result = run_distributed(2, script=WORKER, args=['--out', str(tmp_path)])
    result.check()  # raises with every rank's output if one failed
    assert result[1].stdout == ...

    result = run_distributed(2, func=my_module_level_function, args=(x,))
    assert result.values == [expected_rank0, expected_rank1]
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import pathlib
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    'LAUNCHER_PREFIXES',
    'LAUNCHER_VARIABLES',
    'REPO_ROOT',
    'LaunchResult',
    'ProcessResult',
    'clean_environ',
    'free_port',
    'run_distributed',
    'run_parallel',
    'torchrun_environ',
]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

LAUNCHER_PREFIXES = (
    'SLURM_',
    'SLURMD_',
    'OMPI_',
    'PMI_',
    'PMIX_',
    'MPI_',
    'TORCHELASTIC_',
)
LAUNCHER_VARIABLES = (
    'RANK',
    'LOCAL_RANK',
    'WORLD_SIZE',
    'LOCAL_WORLD_SIZE',
    'GROUP_RANK',
    'GROUP_WORLD_SIZE',
    'ROLE_RANK',
    'ROLE_WORLD_SIZE',
    'ROLE_NAME',
    'MASTER_ADDR',
    'MASTER_PORT',
)


@dataclasses.dataclass
class ProcessResult:
    """What one process left behind.

    Attributes:
        index: the rank (``run_distributed``) or the process index.
        returncode: the exit status; negative when killed by a signal.
        stdout: everything it wrote to stdout.
        stderr: everything it wrote to stderr.
        timed_out: whether it was killed at the deadline.
        value: the function's return value (``func=`` launches only).

    """

    index: int
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False
    value: Any = None

    @property
    def ok(self) -> bool:
        """Whether the process exited with status 0 before the deadline."""
        return self.returncode == 0 and not self.timed_out

    def describe(self) -> str:
        """A report of this process for assertion messages."""
        state = 'TIMED OUT' if self.timed_out else f'exit {self.returncode}'
        return (
            f'--- process {self.index}: {state}\n'
            f'--- stdout:\n{self.stdout}\n'
            f'--- stderr:\n{self.stderr}'
        )


@dataclasses.dataclass
class LaunchResult:
    """The results of every process of one launch, in rank order."""

    processes: list[ProcessResult]

    def __getitem__(self, index: int) -> ProcessResult:
        return self.processes[index]

    def __iter__(self) -> Iterator[ProcessResult]:
        return iter(self.processes)

    def __len__(self) -> int:
        return len(self.processes)

    @property
    def returncodes(self) -> list[int]:
        """Every process's exit status."""
        return [p.returncode for p in self.processes]

    @property
    def values(self) -> list[Any]:
        """Every process's return value (``func=`` launches)."""
        return [p.value for p in self.processes]

    @property
    def ok(self) -> bool:
        """Whether every process exited with status 0 in time."""
        return all(p.ok for p in self.processes)

    def describe(self) -> str:
        """Every process's report, for assertion messages."""
        return '\n'.join(p.describe() for p in self.processes)

    def check(self) -> LaunchResult:
        """Raise AssertionError with every output unless all succeeded."""
        if not self.ok:
            raise AssertionError(
                f'exit codes {self.returncodes}\n{self.describe()}'
            )
        return self


def free_port(host: str = '127.0.0.1') -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def clean_environ(
    base: Mapping[str, str] | None = None,
    *,
    drop: Sequence[str] = (),
) -> dict[str, str]:
    """A copy of the environment without any launcher's variables.

    The repository root is prepended to ``PYTHONPATH`` so that ``drytorch``
    and ``tests.helpers`` import in the child without an installation.

    Args:
        base: the variables to start from; ``os.environ`` when omitted.
        drop: more variable names to remove.

    """
    env = dict(os.environ if base is None else base)
    for name in list(env):
        if name in LAUNCHER_VARIABLES or name.startswith(LAUNCHER_PREFIXES):
            del env[name]
    for name in drop:
        env.pop(name, None)
    paths = [str(REPO_ROOT)]
    if env.get('PYTHONPATH'):
        paths.append(env['PYTHONPATH'])
    env['PYTHONPATH'] = os.pathsep.join(paths)
    env.setdefault('OMP_NUM_THREADS', '1')
    env['PYTHONUNBUFFERED'] = '1'
    return env


def torchrun_environ(
    rank: int,
    world_size: int,
    master_port: int,
    *,
    master_addr: str = '127.0.0.1',
    nproc_per_node: int | None = None,
    run_id: str = 'none',
    restart_count: int = 0,
) -> dict[str, str]:
    """The variables that torchrun exports to the worker of ``rank``."""
    per_node = nproc_per_node or world_size
    return {
        'RANK': str(rank),
        'LOCAL_RANK': str(rank % per_node),
        'WORLD_SIZE': str(world_size),
        'LOCAL_WORLD_SIZE': str(per_node),
        'GROUP_RANK': str(rank // per_node),
        'GROUP_WORLD_SIZE': str(-(-world_size // per_node)),
        'ROLE_RANK': str(rank),
        'ROLE_WORLD_SIZE': str(world_size),
        'ROLE_NAME': 'default',
        'MASTER_ADDR': master_addr,
        'MASTER_PORT': str(master_port),
        'TORCHELASTIC_RUN_ID': run_id,
        'TORCHELASTIC_RESTART_COUNT': str(restart_count),
        'TORCHELASTIC_MAX_RESTARTS': '0',
    }


def run_distributed(
    world_size: int,
    *,
    script: str | os.PathLike[str] | None = None,
    func: Callable[..., Any] | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
    fail_fast: bool = True,
    grace: float = 5.0,
    nproc_per_node: int | None = None,
    run_id: str = 'none',
    restart_count: int = 0,
    master_port: int | None = None,
) -> LaunchResult:
    """Run ``script`` or ``func`` in ``world_size`` torchrun-like workers.

    Args:
        world_size: how many processes (ranks) to start.
        script: a Python file to run; ``args`` are its command line.
        func: a module-level function to call with ``args`` and ``kwargs``
            in each process; its return value comes back in ``value``.
        args: the script's arguments, or the function's positional ones.
        kwargs: the function's keyword arguments.
        env: variables added to (or overriding) each process's environment.
        cwd: the working directory of every process.
        timeout: seconds from the start after which every process still
            running is killed (and reported as timed out).
        fail_fast: once a process fails, kill the others after ``grace``
            seconds instead of letting them hang in a collective.
        grace: seconds left to the others once a process failed.
        nproc_per_node: ranks per simulated node (all on this machine).
        run_id: ``TORCHELASTIC_RUN_ID`` ('none', torchrun's default, means
            no rendezvous id).
        restart_count: ``TORCHELASTIC_RESTART_COUNT``.
        master_port: the rendezvous port; a free one by default.

    """
    port = master_port or free_port()
    envs = []
    for rank in range(world_size):
        child = clean_environ()
        child['DRYTORCH_DIST_TIMEOUT'] = str(max(int(timeout), 1))
        child.update(
            torchrun_environ(
                rank,
                world_size,
                port,
                nproc_per_node=nproc_per_node,
                run_id=run_id,
                restart_count=restart_count,
            )
        )
        child.update(env or {})
        envs.append(child)
    return _launch(
        envs,
        script=script,
        func=func,
        args=args,
        kwargs=kwargs,
        cwd=cwd,
        timeout=timeout,
        fail_fast=fail_fast,
        grace=grace,
    )


def run_parallel(
    count: int,
    *,
    script: str | os.PathLike[str] | None = None,
    func: Callable[..., Any] | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
    fail_fast: bool = False,
    grace: float = 5.0,
) -> LaunchResult:
    """Run ``script`` or ``func`` in ``count`` independent processes.

    No launcher variable is set; each process finds its index in
    ``TEST_PROCESS_INDEX`` and the count in ``TEST_PROCESS_COUNT``.  The
    arguments are those of :func:`run_distributed`.
    """
    envs = []
    for index in range(count):
        child = clean_environ()
        child['TEST_PROCESS_INDEX'] = str(index)
        child['TEST_PROCESS_COUNT'] = str(count)
        child.update(env or {})
        envs.append(child)
    return _launch(
        envs,
        script=script,
        func=func,
        args=args,
        kwargs=kwargs,
        cwd=cwd,
        timeout=timeout,
        fail_fast=fail_fast,
        grace=grace,
    )


def _launch(
    envs: list[dict[str, str]],
    *,
    script: str | os.PathLike[str] | None,
    func: Callable[..., Any] | None,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    cwd: str | os.PathLike[str] | None,
    timeout: float,
    fail_fast: bool,
    grace: float,
) -> LaunchResult:
    if (script is None) == (func is None):
        raise ValueError('pass exactly one of script= and func=')
    with tempfile.TemporaryDirectory(prefix='drytorch-mp-') as tmp:
        work = pathlib.Path(tmp)
        if script is not None:
            if kwargs:
                raise ValueError('kwargs= only applies to func=')
            base = [sys.executable, str(script), *map(str, args)]
            commands = [base for _ in envs]
        else:
            assert func is not None
            payload = work / 'payload.pkl'
            payload.write_bytes(
                pickle.dumps((tuple(args), dict(kwargs or {})))
            )
            target = _function_target(func)
            commands = [
                [
                    sys.executable,
                    __file__,
                    *target,
                    str(payload),
                    str(work / f'value-{index}.pkl'),
                ]
                for index in range(len(envs))
            ]
        processes = _start_all(commands, envs, cwd, work)
        codes, timed_out = _wait_all(processes, timeout, fail_fast, grace)
        results = []
        for index, _ in enumerate(processes):
            value = None
            value_file = work / f'value-{index}.pkl'
            if func is not None and value_file.exists():
                value = pickle.loads(value_file.read_bytes())
            results.append(
                ProcessResult(
                    index=index,
                    returncode=codes[index],
                    stdout=_read(work / f'out-{index}.txt'),
                    stderr=_read(work / f'err-{index}.txt'),
                    timed_out=timed_out[index],
                    value=value,
                )
            )
    return LaunchResult(results)


def _function_target(func: Callable[..., Any]) -> list[str]:
    qualname = getattr(func, '__qualname__', '')
    if not qualname or '<' in qualname:
        raise ValueError(
            f'{func!r} is not a module-level function; the child processes '
            'must be able to import it by name.'
        )
    return [str(pathlib.Path(inspect.getfile(func)).resolve()), qualname]


def _start_all(
    commands: list[list[str]],
    envs: list[dict[str, str]],
    cwd: str | os.PathLike[str] | None,
    work: pathlib.Path,
) -> list[subprocess.Popen[bytes]]:
    processes = []
    try:
        for index, (command, env) in enumerate(
            zip(commands, envs, strict=True)
        ):
            with (
                (work / f'out-{index}.txt').open('wb') as out,
                (work / f'err-{index}.txt').open('wb') as err,
            ):
                processes.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        cwd=cwd,
                        stdout=out,
                        stderr=err,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
    except BaseException:
        for process in processes:
            _kill(process)
        raise
    return processes


def _wait_all(
    processes: list[subprocess.Popen[bytes]],
    timeout: float,
    fail_fast: bool,
    grace: float,
) -> tuple[list[int], list[bool]]:
    deadline = time.monotonic() + timeout
    timed_out = [False] * len(processes)
    try:
        while True:
            codes = [p.poll() for p in processes]
            if all(code is not None for code in codes):
                break
            now = time.monotonic()
            failed = any(code not in (None, 0) for code in codes)
            if fail_fast and failed:
                deadline = min(deadline, now + grace)
            if now >= deadline:
                for index, process in enumerate(processes):
                    if process.poll() is None:
                        timed_out[index] = True
                        _kill(process)
                break
            time.sleep(0.02)
    finally:
        for process in processes:
            if process.poll() is None:
                _kill(process)
    return [int(p.wait()) for p in processes], timed_out


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill a process we started, and the children of its session."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.wait()


def _read(path: pathlib.Path) -> str:
    return path.read_bytes().decode('utf-8', errors='replace')


def _child_main(argv: list[str]) -> int:
    """In a child: import the function's file, call it, store its value."""
    import importlib.util

    file, qualname, payload, value_file = argv
    path = pathlib.Path(file)
    # Python put this helper's folder first; the function's folder goes
    # there instead, so that this file shadows no module named like it.
    here = str(pathlib.Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p != here]
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f'cannot import {path}')
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    target: Any = module
    for part in qualname.split('.'):
        target = getattr(target, part)
    call_args, call_kwargs = pickle.loads(pathlib.Path(payload).read_bytes())
    value = target(*call_args, **call_kwargs)
    pathlib.Path(value_file).write_bytes(pickle.dumps(value))
    return 0


if __name__ == '__main__':
    sys.exit(_child_main(sys.argv[1:]))

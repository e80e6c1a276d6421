"""What a preemption costs the digits demo: stopping, saving, restarting.

Each trial trains ``drytorch.demo`` (3 epochs, CPU, the standard trackers
and the demo's CSV) in a fresh ``python`` process, sends it SIGUSR2 at a
random step of its second or third epoch, waits for it to exit with the
requeue status, then starts the resumed attempt as a second fresh process
and lets it finish.  The child processes note the moments that matter on
the machine's monotonic clock (shared by every process), and this script
notes when it sent the signal, saw the exit and started the restart:

- signal to exit, without the checkpoint write: from ``os.kill`` to the
  process being gone, less the write itself; split into reaching the step
  boundary, gathering the state, stopping the run (trackers closed,
  registry updated) and the interpreter's own exit, next to the exit of
  the resumed attempt once it completed and of a bare process that imported
  the same modules;
- the checkpoint write: ``LocalCheckpoint.save`` (serialise, fsync, rename,
  move the ``latest`` pointer), with the file's size;
- restart to the first resumed step: from starting the process to the end
  of its first training step; split into interpreter and imports, run
  start, checkpoint load, and the step.

    python benchmarks/preemption.py              # 5 trials
    python benchmarks/preemption.py --trials 9
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

EPOCHS = 3
THREADS = 1
RESULTS = pathlib.Path(__file__).parent / 'results' / 'preemption.json'


# ---------------------------------------------------------------- child
def child(args: argparse.Namespace) -> int:
    """One attempt of the demo, timed from inside."""
    marks: dict[str, Any] = {'writes': []}
    import torch

    torch.set_num_threads(THREADS)
    from drytorch import demo
    from drytorch.core import experimenting
    from drytorch.distributed.preemption import watcher
    from drytorch.lib import checkpoints, training

    marks['imported'] = time.monotonic()
    save = checkpoints.LocalCheckpoint.save
    preempt = training.Trainer._preempt
    step = training.Trainer._step
    load = training.Trainer.load_state_dict
    auto_resume = training.Trainer._auto_resume
    start = experimenting.Run.start
    stop = experimenting.Run.stop
    steps = 0

    def timed_save(self: Any, state: Any, epoch: int, batch: int = 0) -> str:
        begun = time.monotonic()
        location = save(self, state, epoch, batch)
        size = pathlib.Path(location).stat().st_size
        marks['writes'].append((begun, time.monotonic(), size))
        return location

    def timed_preempt(self: Any, *position: Any) -> None:
        marks['preempt_noticed'] = time.monotonic()
        marks['signal_handled'] = watcher.signalled_at
        preempt(self, *position)

    def timed_step(self: Any, batch: Any, n: int) -> None:
        nonlocal steps
        step(self, batch, n)
        steps += 1
        if steps == 1:
            marks['first_step_done'] = time.monotonic()
        if steps == args.arm_step:
            print('ARMED', flush=True)

    def timed_load(self: Any, state: Any) -> None:
        load(self, state)
        marks['checkpoint_loaded'] = time.monotonic()

    def timed_auto_resume(self: Any) -> None:
        marks.setdefault('resume_begun', time.monotonic())
        auto_resume(self)

    def timed_start(self: Any) -> Any:
        run = start(self)
        marks['run_started'] = time.monotonic()
        return run

    def timed_stop(self: Any, status: Any = 'completed') -> None:
        marks['stop_begun'] = time.monotonic()
        stop(self, status)
        marks['stop_done'] = time.monotonic()

    checkpoints.LocalCheckpoint.save = timed_save  # type: ignore[method-assign]
    training.Trainer._preempt = timed_preempt  # type: ignore[method-assign]
    training.Trainer._step = timed_step  # type: ignore[method-assign]
    training.Trainer.load_state_dict = timed_load  # type: ignore[method-assign]
    training.Trainer._auto_resume = timed_auto_resume  # type: ignore[method-assign]
    experimenting.Run.start = timed_start  # type: ignore[method-assign]
    experimenting.Run.stop = timed_stop  # type: ignore[method-assign]
    config = demo.DemoConfig(epochs=EPOCHS)
    try:
        demo.train_digits(config, args.par_dir, 'bench', args.resume)
    finally:
        marks['steps'] = steps
        pathlib.Path(args.marks).write_text(json.dumps(marks))
        from drytorch.distributed import teardown_distributed

        teardown_distributed()
    return 0


# ---------------------------------------------------------------- parent
def _environ() -> dict[str, str]:
    env = dict(os.environ)
    for name in list(env):
        if name.startswith(('SLURM_', 'SUBMITIT_', 'TORCHELASTIC_')):
            del env[name]
    root = str(pathlib.Path(__file__).resolve().parents[1])
    env['PYTHONPATH'] = os.pathsep.join(
        filter(None, [root, env.get('PYTHONPATH')])
    )
    env['OMP_NUM_THREADS'] = str(THREADS)
    env.pop('DRYTORCH_INIT_MODE', None)  # the standard trackers
    return env


def _command(folder: pathlib.Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(pathlib.Path(__file__).resolve()),
        '--child',
        '--par-dir',
        str(folder / 'experiments'),
        '--marks',
        str(folder / f'{name}.json'),
        *extra,
    ]


def bare_exit(env: dict[str, str]) -> float:
    """Seconds a process that imported what the demo imports takes to exit."""
    code = (
        'import torch, sklearn.datasets, drytorch.demo, '
        'drytorch.trackers.tqdm, drytorch.trackers.yaml; '
        'torch.optim.Adam([torch.zeros(1, requires_grad=True)]); '
        'print("READY", flush=True)'
    )
    process = subprocess.Popen(
        [sys.executable, '-c', code], stdout=subprocess.PIPE, env=env
    )
    assert process.stdout is not None
    process.stdout.readline()
    ready = time.monotonic()
    process.wait()
    return time.monotonic() - ready


def trial(folder: pathlib.Path, arm_step: int, delay: float) -> dict[str, Any]:
    """One preemption and restart; the durations in seconds."""
    env = _environ()
    with (folder / 'first.log').open('wb') as log:
        first = subprocess.Popen(
            _command(folder, 'first', '--arm-step', str(arm_step)),
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
        )
        assert first.stdout is not None
        for line in first.stdout:
            if line.strip() == b'ARMED':
                break
        time.sleep(delay)
        signalled = time.monotonic()
        first.send_signal(signal.SIGUSR2)
        code = first.wait()
        exited = time.monotonic()
    if code != 3:
        raise RuntimeError(
            f'the preempted attempt exited with {code}, not 3: '
            f'{(folder / "first.log").read_text()[-3000:]}'
        )
    with (folder / 'second.log').open('wb') as log:
        restarted = time.monotonic()
        code = subprocess.run(
            _command(folder, 'second', '--resume'),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        ).returncode
        finished = time.monotonic()
    if code != 0:
        raise RuntimeError(
            f'the resumed attempt exited with {code}: '
            f'{(folder / "second.log").read_text()[-3000:]}'
        )
    one = json.loads((folder / 'first.json').read_text())
    two = json.loads((folder / 'second.json').read_text())
    noticed = one['preempt_noticed']
    write_start, write_end, size = next(
        w for w in one['writes'] if w[0] >= noticed
    )
    write = write_end - write_start
    return {
        'signal_to_exit_excluding_write_s': exited - signalled - write,
        'checkpoint_write_s': write,
        'restart_to_first_resumed_step_s': two['first_step_done'] - restarted,
        'checkpoint_bytes': size,
        'signal_to_exit_s': exited - signalled,
        'signal_to_step_boundary_s': noticed - signalled,
        'handler_delay_s': one['signal_handled'] - signalled,
        'state_gathering_s': write_start - noticed,
        'write_end_to_exit_s': exited - write_end,
        'run_stop_s': one['stop_done'] - one['stop_begun'],
        'interpreter_exit_s': exited - one['stop_done'],
        'restart_imports_s': two['imported'] - restarted,
        'restart_data_and_run_start_s': two['run_started'] - two['imported'],
        'restart_model_and_trainer_s': two['resume_begun']
        - two['run_started'],
        'restart_checkpoint_load_s': two['checkpoint_loaded']
        - two['resume_begun'],
        'restart_first_step_s': two['first_step_done']
        - two['checkpoint_loaded'],
        'completed_run_interpreter_exit_s': finished - two['stop_done'],
        'bare_interpreter_exit_s': bare_exit(env),
        'steps_before_signal': one['steps'],
        'steps_after_restart': two['steps'],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--trials', type=int, default=5)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', type=pathlib.Path, default=RESULTS)
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--par-dir', help=argparse.SUPPRESS)
    parser.add_argument('--marks', help=argparse.SUPPRESS)
    parser.add_argument(
        '--resume', action='store_true', help=argparse.SUPPRESS
    )
    parser.add_argument(
        '--arm-step', type=int, default=0, help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        return child(args)
    chooser = random.Random(args.seed)
    trials = []
    with tempfile.TemporaryDirectory(prefix='drytorch-preempt-') as tmp:
        for index in range(args.trials):
            folder = pathlib.Path(tmp) / f'trial{index}'
            folder.mkdir()
            # a step of the second or third epoch (37 steps per epoch)
            arm_step = chooser.randint(40, 100)
            result = trial(folder, arm_step, chooser.uniform(0.0, 0.005))
            trials.append(result)
            print(
                f'trial {index}: signal to exit '
                f'{result["signal_to_exit_s"]:.3f} s '
                f'(write {result["checkpoint_write_s"] * 1e3:.1f} ms), '
                f'restart to first step '
                f'{result["restart_to_first_resumed_step_s"]:.2f} s',
                flush=True,
            )
    keys = [k for k in trials[0] if k.endswith('_s') or k.endswith('bytes')]
    summary = {
        key: {
            'median': statistics.median(t[key] for t in trials),
            'min': min(t[key] for t in trials),
            'max': max(t[key] for t in trials),
        }
        for key in keys
    }
    import torch

    result = {
        'model': f'drytorch.demo (digits MLP, {EPOCHS} epochs, CPU)',
        'summary': summary,
        'trials': trials,
        'setup': {
            'python': platform.python_version(),
            'torch': torch.__version__,
            'machine': platform.machine(),
            'cpus': os.cpu_count(),
            'threads': THREADS,
            'load_average': os.getloadavg(),
            'trackers': 'standard (log, tqdm, YAML) + CSV',
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + '\n')
    for key in keys[:3]:
        figures = summary[key]
        print(
            f'{key}: median {figures["median"]:.4g} '
            f'(min {figures["min"]:.4g}, max {figures["max"]:.4g})'
        )
    return 0


if __name__ == '__main__':
    sys.exit(main())

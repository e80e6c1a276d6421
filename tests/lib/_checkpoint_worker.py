"""A process killed (SIGKILL) in the middle of writing a checkpoint.

    python _checkpoint_worker.py FOLDER

Trains one epoch and saves a complete checkpoint, then trains another,
whose end starts writing the second checkpoint: halfway through the bytes,
with them flushed to disk, the process kills itself.  What it leaves in
FOLDER is what a power cut or an OOM kill would leave.
"""

from __future__ import annotations

import io
import os
import pathlib
import signal
import sys
from typing import Any

import torch

import drytorch
from drytorch.lib.checkpoints import LocalCheckpoint
from tests.lib import _support


def _half_then_die(obj: Any, stream: Any, *args: Any, **kwargs: Any) -> None:
    buffer = io.BytesIO()
    _real_save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    stream.write(data[: len(data) // 2])
    stream.flush()
    os.fsync(stream.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


_real_save = torch.save


def main(folder: pathlib.Path) -> None:
    drytorch.init_trackers('none')
    experiment = drytorch.Experiment(
        None, name='Killed', par_dir=folder / 'experiments'
    )
    with experiment.create_run(run_id='killed'):
        trainer = _support.make_trainer(
            checkpoint=LocalCheckpoint(
                folder / 'checkpoints', run_folders=False
            )
        )
        trainer.train(1)
        trainer.save_checkpoint()
        torch.save = _half_then_die
        trainer.train(1)  # the end of a training call checkpoints
    print('not killed', flush=True)  # never reached


if __name__ == '__main__':
    main(pathlib.Path(sys.argv[1]))

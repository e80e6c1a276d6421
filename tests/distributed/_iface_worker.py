"""One rank: drytorch brings gloo up from SLURM's variables, all-reduces.

Prints ``RESULT {json}`` with the host name, the interface gloo was given
and the sum; a setup error is printed as ``SETUP {message}``, exit 3.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import torch
import torch.distributed as dist

from drytorch.distributed import DistributedSetupError, init_distributed


def main() -> int:
    try:
        env = init_distributed()
    except DistributedSetupError as exc:
        print(f'SETUP {exc}', flush=True)
        return 3
    total = torch.tensor([env.rank + 1.0])
    dist.all_reduce(total)
    print(
        'RESULT '
        + json.dumps(
            {
                'rank': env.rank,
                'host': socket.gethostname(),
                'ifname': os.environ.get('GLOO_SOCKET_IFNAME'),
                'sum': total.item(),
            }
        ),
        flush=True,
    )
    dist.destroy_process_group()
    return 0


if __name__ == '__main__':
    sys.exit(main())

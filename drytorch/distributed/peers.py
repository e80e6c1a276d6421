"""Which rank runs where, so that a lost peer can be named.

When a node dies, the ranks that survive see their next collective fail
with the transport's own words: gloo says ``Read error [10.213.0.12]:51403:
Connection reset by peer``, NCCL that a remote process exited.  Neither
says which rank or which host that was, and on a job of many nodes that is
the first thing to know (which node to drain, whether it was a rank that
crashed or a machine).

So, once, when the process group comes up, every rank shares its host name
and addresses (one small ``all_gather_object``; no collective afterwards).
A collective that later fails with a transport error is re-raised as
:class:`PeerLostError`, which names the ranks and hosts behind the
addresses in the message (or, for a timeout, says that a peer stopped
answering), where training was, and what happens next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import re
import socket
from collections.abc import Callable, Iterator, Sequence

import torch.distributed as dist

__all__ = ['Peer', 'PeerLostError', 'peer_table', 'record_peers', 'named']

# what gloo, NCCL and the c10d store say when the other end is gone
_LOST = re.compile(
    r'Connection reset by peer|Connection closed by peer|Broken pipe|'
    r'Connection refused|Read error|Write error|[Tt]imed out|Socket Timeout|'
    r'remote process exited|NCCL communicator was aborted|'
    r'ProcessGroupNCCL.*(?:timeout|abort)|Connection (?:was )?lost'
)
_ADDRESS = re.compile(r'\[([0-9A-Fa-f:.]+)\]:(\d+)')


@dataclasses.dataclass(frozen=True)
class Peer:
    """One rank: where it runs."""

    rank: int
    host: str
    addresses: tuple[str, ...]


_TABLE: tuple[Peer, ...] = ()


class PeerLostError(RuntimeError):
    """A collective failed because another rank, or its node, is gone.

    A ``RuntimeError``, as the transport's own error is, so existing
    handlers keep working; the original is its ``__cause__``.

    Attributes:
        lost: the ranks named by the transport's error (empty when it named
            no address, e.g. a timeout).

    """

    def __init__(self, message: str, lost: Sequence[Peer] = ()) -> None:
        super().__init__(message)
        self.lost = tuple(lost)


def record_peers(master_addr: str | None = None) -> None:
    """Share this rank's host and addresses with every rank (collective).

    Called by drytorch right after the process group comes up, on every
    rank.
    """
    global _TABLE
    if not dist.is_initialized():
        return
    mine = Peer(dist.get_rank(), socket.gethostname(), _addresses(master_addr))
    table: list[Peer | None] = [None] * dist.get_world_size()
    dist.all_gather_object(table, mine)
    _TABLE = tuple(peer for peer in table if peer is not None)


def peer_table() -> tuple[Peer, ...]:
    """Every rank's host and addresses, as shared at the start."""
    return _TABLE


def forget_peers() -> None:
    """Drop the table (the process group is gone)."""
    global _TABLE
    _TABLE = ()


def explain(exc: BaseException, where: str) -> PeerLostError | None:
    """A :class:`PeerLostError` for ``exc`` if a peer is what failed."""
    if not isinstance(exc, RuntimeError) or isinstance(exc, PeerLostError):
        return None
    if not dist.is_initialized() or not _lost(exc):
        return None
    text = str(exc)
    addresses = [_canonical(found[1]) for found in _ADDRESS.finditer(text)]
    rank = dist.get_rank()
    # an address names a host, not a rank: every rank on it is a suspect
    lost = [p for p in _TABLE if set(p.addresses) & set(addresses)]
    me = next((p for p in _TABLE if p.rank == rank), None)
    who = f'rank {rank}' + (f' on {me.host}' if me else '')
    if lost:
        hosts = sorted({p.host for p in lost})
        ranks = [p.rank for p in lost if p.rank != rank]
        gone = (
            f'its peer on {", ".join(hosts)}'
            + (f' (ranks there: {_ranks(ranks)})' if ranks else '')
            + f' at {", ".join(sorted(set(addresses)))} is gone'
        )
    elif addresses:
        gone = (
            f'the peer at {", ".join(sorted(set(addresses)))} (no rank of '
            'this job had that address at the start) is gone'
        )
    else:
        gone = (
            'a peer stopped answering within the distributed timeout '
            '($DRYTORCH_DIST_TIMEOUT)'
        )
    message = (
        f'{who}: {where} failed because {gone}: '
        f'{_first_line(text)}. The rank or its node ended (crashed, killed, '
        'or its node failed or lost its network); the job cannot go on. '
        "Look at the lost ranks' logs first. A job submitted with "
        '--requeue (drytorch.launch.submit does) comes back when SLURM '
        'gives it nodes again, and resumes from the last complete '
        'checkpoint.'
    )
    return PeerLostError(message, lost)


@contextlib.contextmanager
def named(where: str | Callable[[], str]) -> Iterator[None]:
    """Re-raise a transport error of a lost peer as :class:`PeerLostError`.

    ``where`` (or what it returns when the error comes) says what was
    running, e.g. the model, the epoch and the batch.
    """
    try:
        yield
    except RuntimeError as exc:
        error = explain(exc, where if isinstance(where, str) else where())
        if error is None:
            raise
        raise error from exc


def _lost(exc: BaseException) -> bool:
    dist_error = getattr(dist, 'DistError', None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    return bool(_LOST.search(str(exc)))


def _addresses(master_addr: str | None) -> tuple[str, ...]:
    """The addresses this host is known by to its peers."""
    found: list[str] = []
    host = socket.gethostname()
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(host, None):
            found.append(_canonical(str(info[4][0])))
    if master_addr:
        # the address a connection to the master leaves from: the one gloo
        # uses when the host name resolves to loopback
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe,
        ):
            probe.connect((socket.gethostbyname(master_addr), 9))
            found.append(_canonical(probe.getsockname()[0]))
    return tuple(dict.fromkeys(found))


def _canonical(address: str) -> str:
    """IPv4-mapped IPv6 (``::ffff:10.0.0.2``) as plain IPv4."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = getattr(parsed, 'ipv4_mapped', None)
    return str(mapped or parsed)


def _ranks(ranks: Sequence[int]) -> str:
    return ', '.join(str(r) for r in sorted(ranks))


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ''
    line = re.sub(r'^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*', '', line)
    return line.split('. This is typically caused')[0].rstrip('.')

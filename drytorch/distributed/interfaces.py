"""Which network interface gloo binds to, on hosts with several.

Gloo picks its address by resolving the host's own name.  On many
machines that gives a loopback address (Debian writes ``127.0.1.1
<hostname>`` into /etc/hosts; a container's name may not resolve at all),
and gloo then binds to loopback and tells its peers on other nodes to
connect there: every rank times out with ``Connection refused,
remote=[127.0.0.1]``.  ``GLOO_SOCKET_IFNAME`` fixes it, but a user must
first know that it exists and which interface is the right one.

So, before a gloo group comes up across hosts, drytorch checks: an
interface the user named must exist (an error lists those that do); with
none named, a host name that resolves only to loopback gets the interface
that the route to rank zero's address leaves from, which is the one its
peers can reach.  One process group, one choice: it is logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import socket
import struct

__all__ = ['VARIABLE', 'check_named', 'choose_for_gloo']

VARIABLE = 'GLOO_SOCKET_IFNAME'
_SIOCGIFADDR = 0x8915  # Linux: the IPv4 address of an interface

_logger = logging.getLogger('drytorch')


def names() -> list[str]:
    """The host's network interfaces."""
    return [name for _, name in socket.if_nameindex()]


def check_named(value: str) -> str | None:
    """What is wrong with ``GLOO_SOCKET_IFNAME=value``, if anything.

    Gloo accepts a comma-separated list (one device per interface).
    """
    known = names()
    missing = [n for n in value.split(',') if n.strip() not in known]
    if not missing:
        return None
    return (
        f'{VARIABLE}={value!r} names no interface of this host '
        f'({", ".join(missing)}); it has {", ".join(known) or "none"}'
    )


def choose_for_gloo(master_addr: str) -> str | None:
    """Set ``GLOO_SOCKET_IFNAME`` when gloo would bind to loopback.

    Returns the interface chosen, or None when nothing was needed (the
    variable is set, the job is on one host, the host name resolves to a
    routable address) or possible (no interface holds the address that
    reaches the master).
    """
    if os.environ.get(VARIABLE):
        return None
    if _is_loopback(master_addr) or not _resolves_to_loopback():
        return None
    local = _source_towards(master_addr)
    if local is None or _is_loopback(local):
        return None
    for name in names():
        if _ipv4_of(name) == local:
            os.environ[VARIABLE] = name
            _logger.info(
                '%s resolves only to loopback; gloo binds to %s (%s), the '
                'interface towards %s (set %s to choose another).',
                socket.gethostname(),
                name,
                local,
                master_addr,
                VARIABLE,
            )
            return name
    return None


def _resolves_to_loopback() -> bool:
    """Whether this host's name gives no address but loopback ones."""
    try:
        found = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        return True  # gloo falls back to loopback then too
    addresses = {str(info[4][0]) for info in found}
    return all(_is_loopback(address) for address in addresses)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name
        try:
            resolved = socket.gethostbyname(address)
        except OSError:
            return False
        return ipaddress.ip_address(resolved).is_loopback


def _source_towards(address: str) -> str | None:
    """The local address a connection to ``address`` would leave from."""
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe,
    ):
        # a UDP connect sends nothing: it only asks the kernel for a route
        probe.connect((socket.gethostbyname(address), 9))
        return str(probe.getsockname()[0])
    return None


def _ipv4_of(name: str) -> str | None:
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
    ):
        request = struct.pack('256s', name.encode()[:15])
        answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
        return socket.inet_ntoa(answer[20:24])
    return None

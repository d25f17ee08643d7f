"""Network guard for the processes a test starts (a Jupyter kernel, ``medlab demo``, their children).

Put this folder first on ``PYTHONPATH`` and set ``MEDLAB_NETWORK_LOG`` to a file: Python imports
``sitecustomize`` at start-up, before any user code, so in every Python process started with
that environment

* a connection (``socket.connect``/``connect_ex``, datagrams by ``sendto``/``sendmsg``) to an
  address that is not on this machine (loopback, the unspecified address, a Unix socket) is
  refused with ``OSError(ENETUNREACH)``;
* a name lookup (``getaddrinfo``, ``gethostbyname``...) of anything but ``localhost`` is refused
  with ``socket.gaierror`` (resolving a name may itself query a DNS server);

and every attempt, allowed or refused, is appended to the log as one JSON line (pid, what, the
target, allowed or not), as is a ``"guard"`` line when the guard is installed in a process. A test
reads the log to prove that the guard was active in the process that ran the code, and that no
call tried to leave the machine.

It covers everything that uses Python's ``socket`` module (``urllib``, ``requests``/``urllib3``,
``http.client``, asyncio, tornado, pooch, dask). Libraries that open sockets from C (libzmq,
which Jupyter's kernel uses on 127.0.0.1, or libcurl) bypass it; medlab uses none of those for
data.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import sys
import threading
import time

_LOG = os.environ.get("MEDLAB_NETWORK_LOG")
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_lock = threading.Lock()


def _record(kind: str, target, allowed: bool) -> None:
    line = json.dumps({"pid": os.getpid(), "time": time.time(), "kind": kind, "target": repr(target)[:200],
                       "allowed": allowed, "argv": sys.argv[:3]})
    with _lock, open(_LOG, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def _is_local_host(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]").split("%")[0]
    if host == "" or host.lower() in _LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _is_numeric(host) -> bool:
    try:
        ipaddress.ip_address(str(host).strip("[]").split("%")[0])
    except ValueError:
        return False
    return True


def _local_address(sock, address) -> bool:
    if getattr(socket, "AF_UNIX", None) is not None and sock.family == socket.AF_UNIX:
        return True
    if isinstance(address, tuple) and address:
        return _is_local_host(address[0])
    return False


def _refuse(kind: str, target):
    _record(kind, target, False)
    return OSError(errno.ENETUNREACH, f"network disabled by the medlab test guard: {kind} {target!r}")


def _install() -> None:
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_sendto, real_sendmsg = socket.socket.sendto, socket.socket.sendmsg
    real_getaddrinfo, real_gethostbyname = socket.getaddrinfo, socket.gethostbyname
    real_gethostbyname_ex = socket.gethostbyname_ex

    def connect(self, address):
        if not _local_address(self, address):
            raise _refuse("connect", address)
        _record("connect", address, True)
        return real_connect(self, address)

    def connect_ex(self, address):
        if not _local_address(self, address):
            _record("connect_ex", address, False)
            return errno.ENETUNREACH
        _record("connect_ex", address, True)
        return real_connect_ex(self, address)

    def sendto(self, data, *args):
        address = args[-1]
        if not _local_address(self, address):
            raise _refuse("sendto", address)
        return real_sendto(self, data, *args)

    def sendmsg(self, buffers, *args):
        if len(args) >= 3 and args[2] is not None and not _local_address(self, args[2]):
            raise _refuse("sendmsg", args[2])
        return real_sendmsg(self, buffers, *args)

    def getaddrinfo(host, *args, **kwargs):
        if not (_is_local_host(host) or _is_numeric(host)):
            _record("getaddrinfo", host, False)
            raise socket.gaierror(socket.EAI_NONAME, f"name lookup disabled by the medlab test guard: {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def gethostbyname(host):
        if not (_is_local_host(host) or _is_numeric(host)):
            _record("gethostbyname", host, False)
            raise socket.gaierror(socket.EAI_NONAME, f"name lookup disabled by the medlab test guard: {host!r}")
        return real_gethostbyname(host)

    def gethostbyname_ex(host):
        if not (_is_local_host(host) or _is_numeric(host)):
            _record("gethostbyname_ex", host, False)
            raise socket.gaierror(socket.EAI_NONAME, f"name lookup disabled by the medlab test guard: {host!r}")
        return real_gethostbyname_ex(host)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.socket.sendto, socket.socket.sendmsg = sendto, sendmsg
    socket.getaddrinfo, socket.gethostbyname, socket.gethostbyname_ex = getaddrinfo, gethostbyname, gethostbyname_ex
    _record("guard", "installed", True)


if _LOG:
    _install()

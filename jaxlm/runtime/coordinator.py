"""Checks of the coordinator address, made before ``jax.distributed`` starts.

The coordinator of a multi-process run is a gRPC server that process 0 starts on the
coordinator port. When that port is already taken, jaxlib crashes process 0 (a segmentation
fault, no message) and every other process connects to whatever holds the port and waits
there for the whole ``distributed.initialization_timeout`` (300 s by default) before it
aborts with a C++ stack trace. So, before ``jax.distributed.initialize``:

* **process 0** binds the port itself for a moment, the way the gRPC server will (all
  interfaces, address reuse on), and fails in one line if it cannot;
* **every other process** waits until something accepts connections at the coordinator
  address (process 0 may start later), then checks that it answers like a gRPC server: one
  sends its HTTP/2 SETTINGS frame as soon as a client connects. A listener that stays silent
  or answers otherwise is not the coordinator (process 0 found the port taken and stopped),
  and this process ends in one line within :data:`ANSWER_TIMEOUT_S` seconds.

The probe connection is closed right after the first frame; the coordinator ignores it.
"""

from __future__ import annotations

import errno
import os
import socket
import time

from jaxlm.errors import TrainingError, UserError

ANSWER_TIMEOUT_S = 5.0  # how long a listener may take to send its first HTTP/2 frame
_RETRY_S = 0.25  # between connection attempts while the coordinator is not up yet
# The HTTP/2 client preface and an empty SETTINGS frame (RFC 9113, 3.4 and 6.5).
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_SETTINGS = 0x04  # HTTP/2 frame type; byte 3 of the 9-byte frame header


class CoordinatorPortError(UserError):
    """The coordinator port is taken (by another program or another run): exit code 2."""


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → ``(host, port)``."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        return host, int(port)
    except ValueError:
        raise UserError(f"coordinator address {address!r} needs a numeric port: host:port") \
            from None


def _advice(port: int) -> str:
    return (f"stop what holds port {port} or give every process another port in "
            "distributed.coordinator_address (or JAXLM_COORDINATOR_ADDRESS)")


def check_port_free(coordinator: str, bind_address: str | None = None) -> None:
    """Process 0: raise :class:`CoordinatorPortError` unless the coordinator can listen on its
    port. ``bind_address`` is where JAX will bind (default ``[::]:PORT``, all interfaces)."""
    _, port = split_address(coordinator)
    bind = bind_address or os.environ.get("JAX_COORDINATOR_BIND_ADDRESS") or f"[::]:{port}"
    host, bind_port = split_address(bind)
    attempts: list[tuple[socket.AddressFamily, str]]
    if host in ("::", ""):
        attempts = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
    else:
        attempts = [(socket.AF_INET6 if ":" in host else socket.AF_INET, host)]
    error: OSError | None = None
    for family, addr in attempts:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
                if family == socket.AF_INET6:  # dual stack, as gRPC's [::]
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.bind((addr, bind_port))
                s.listen(1)
                return
        except OSError as e:
            error = e
            if e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                break  # in use or not allowed; "no IPv6 here" tries IPv4 next
    why = f"[Errno {error.errno}] {error.strerror}" if error and error.strerror else str(error)
    raise CoordinatorPortError(
        f"process 0 cannot start the coordinator on port {bind_port} ({bind}): {why}; "
        f"{_advice(bind_port)}")


def _first_frame(host: str, port: int, timeout: float) -> bytes | None:
    """Connect and return the listener's first bytes (up to a frame header), ``b""`` if it
    answered nothing within ``timeout``, or None if nothing accepts connections there yet."""
    try:
        s = socket.create_connection((host, port), timeout=min(timeout, 2.0))
    except OSError:
        return None
    with s:
        s.settimeout(timeout)
        data = b""
        try:
            s.sendall(_PREFACE)
            deadline = time.monotonic() + timeout
            while len(data) < 9 and time.monotonic() < deadline:
                chunk = s.recv(9 - len(data))
                if not chunk:
                    break
                data += chunk
        except OSError:  # a timeout, or the listener reset the connection
            pass
        return data


def wait_for_coordinator(coordinator: str, timeout: float,
                         answer_timeout: float = ANSWER_TIMEOUT_S) -> None:
    """Processes other than 0: return once a gRPC server answers at ``coordinator``.

    Raises :class:`CoordinatorPortError` when a listener there does not answer like one, and
    :class:`~jaxlm.errors.TrainingError` when nothing accepts connections within ``timeout``
    seconds (``distributed.initialization_timeout``).
    """
    host, port = split_address(coordinator)
    deadline = time.monotonic() + timeout
    while True:
        frame = _first_frame(host, port, answer_timeout)
        if frame is not None:
            if len(frame) == 9 and frame[3] == _SETTINGS:
                return
            what = ("answered nothing within "
                    f"{answer_timeout:g}s" if not frame else "did not answer like one")
            raise CoordinatorPortError(
                f"the coordinator address {coordinator} is held by a program that is not the "
                f"run's coordinator (a gRPC server; this one {what}): the port is probably "
                f"taken on process 0's host, so process 0 could not start; {_advice(port)}")
        if time.monotonic() >= deadline:
            raise TrainingError(
                f"nothing accepted connections at the coordinator address {coordinator} within "
                f"distributed.initialization_timeout={timeout:g}s: process 0 did not start, "
                "or the address or port is wrong or blocked; check that every process was "
                "started with the same coordinator address")
        time.sleep(_RETRY_S)

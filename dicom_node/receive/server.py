"""The listening side at the network's edge: no host can lock the others out.

pynetdicom's server gives every TCP connection an association slot from the moment it is
accepted and reads PDUs with blocking ``recv`` calls that have no deadline, so a handful of
stalled sockets (one byte, half an A-ASSOCIATE-RQ, a PDU header announcing 4 GiB) hold every
slot for minutes, and a shutdown waits for them. :class:`EdgeAssociationServer` adds, before
pynetdicom sees a connection:

- a per-host limit on open connections (``network.max_associations_per_host``); a connection
  over it gets an A-ASSOCIATE-RJ (transient, local limit exceeded) at once, without a thread;
- a deadline for the A-ASSOCIATE-RQ (``network.association_request_timeout``, counted from
  the TCP accept): a connection that has not sent a complete request by then is closed;
- a deadline for every PDU once it has started (``network.network_timeout``): a PDU that
  stalls mid-way, or trickles in, is cut; a PDU longer than the node accepts is refused
  with an A-ABORT before it is read;
- ``network.max_associations`` counted over associations that sent a request the node
  would accept, not over raw connections;
- a garbage DIMSE command set aborts that association (A-ABORT), instead of killing a
  pynetdicom reactor thread;
- at most a few pynetdicom log lines per connection, each on one line, and one summary;
- every refusal counted (``cxr_connections_refused`` by reason, with ``metrics``) and, with
  ``audit``, an audit record of it, held back like its log line (at most one per host, reason
  and 10 s, with the number held back);
- :meth:`EdgeAssociationServer.close_connections`, which ends every connection within a
  bounded time, whatever the peers do (SIGTERM);
- on the TLS port, the handshake in the connection's reader, under the A-ASSOCIATE-RQ
  deadline (pynetdicom does it in the accept loop, where one silent client stalls every
  other): a failed handshake is one line, never a traceback.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer
from pynetdicom.utils import make_target

from dicom_node.audit import peer_address
from dicom_node.log_safety import pynetdicom_loggers
from dicom_node.receive.reactor import WakeableDUL, next_message, wait_readable
from dicom_node.tcp import no_delay_socket
from dicom_node.tls import handshake_failure_reason

if TYPE_CHECKING:
    from pynetdicom.ae import ApplicationEntity

    from dicom_node.audit import AuditLog
    from dicom_node.metrics import NodeMetrics

logger = logging.getLogger(__name__)

MODE_ACCEPTOR = "acceptor"
# Largest A-ASSOCIATE-RQ / A-RELEASE / A-ABORT PDU the node reads (they are a few KiB).
MAX_CONTROL_PDU = 1024 * 1024
# A host whose connections are refused gets one log line per this many seconds.
REJECTION_LOG_INTERVAL = 10.0
# Seconds a refused connection stays half-open so the peer reads the A-ASSOCIATE-RJ, and
# how many such sockets may wait at once (more are closed right away).
_LINGER_SECONDS = 2.0
_MAX_LINGERING = 256
_PDU_TYPES = range(0x01, 0x08)
# The most a PDU read allocates ahead of the bytes it has received.
_GROW_BYTES = 1024 * 1024




@dataclass(frozen=True)
class ConnectionLimits:
    """The connection policy; built from :class:`~dicom_node.config.NodeConfig`."""

    association_request_timeout: float = 10.0
    network_timeout: float = 60.0
    max_associations: int = 16
    max_associations_per_host: int = 4
    maximum_pdu_size: int = 131072


class SlotPool:
    """``max_associations`` shared by every listener of the node (plaintext and TLS)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._taken = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._taken >= self.capacity:
                return False
            self._taken += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._taken = max(0, self._taken - 1)


@dataclass(eq=False)
class Connection:
    """One accepted TCP connection, from accept to close."""

    host: str
    port: int
    sock: socket.socket
    accepted_at: float
    request_deadline: float
    assoc: EdgeAssociation | None = None
    has_slot: bool = False  # counted against max_associations
    request_received: bool = False  # a complete A-ASSOCIATE-RQ PDU was read
    quiet: bool = False  # the node logged why it ends: pynetdicom's messages add nothing
    problems: int = 0  # pynetdicom's messages about it, held back
    first_problem: str = ""
    closed: bool = False

    @property
    def peer(self) -> str:
        return peer_address(self.host, self.port)

    @property
    def requested(self) -> bool:
        """Whether a complete A-ASSOCIATE-RQ arrived."""
        return self.request_received or (self.assoc is not None and self.assoc.requestor.primitive is not None)

    def cut(self) -> None:
        """Close the transport now (wakes a ``recv`` blocked in another thread)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _RateLimitedLog:
    """One line per key and interval; the lines held back are counted in the next one."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._last: dict[Any, tuple[float, int]] = {}

    def warning(self, key: Any, msg: str, *args: Any) -> int | None:
        """Log the line unless one with ``key`` was logged within the interval; return how
        many were held back before it, ``None`` when this one is held back."""
        now = time.monotonic()
        with self._lock:
            last, held = self._last.get(key, (-self._interval, 0))
            if now - last < self._interval:
                self._last[key] = (last, held + 1)
                return None
            self._last[key] = (now, 0)
            if len(self._last) > 4096:  # forget quiet hosts; bounded memory
                self._last = {k: v for k, v in self._last.items() if now - v[0] < self._interval}
        logger.warning(msg + (f" ({held} more like this in the last {self._interval:.0f} s)" if held else ""), *args)
        return held


class PynetdicomLineLimit(logging.Filter):
    """On pynetdicom's loggers: every record on one line (an exception as its type name only:
    its text may quote received values). What pynetdicom says about a connection of the
    server is held back and counted: when the connection ends, one line gives the count and
    the first message, unless the node already logged why it ended. At DEBUG level every
    message passes, tagged with the peer."""

    def __init__(self, server: EdgeAssociationServer) -> None:
        super().__init__()
        self._server = server

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            exc = record.exc_info[1]
            record.msg, record.args = "%s (%s)", (record.getMessage(), type(exc).__name__)
            record.exc_info, record.exc_text = None, None
        conn = self._server.connection_of_thread(threading.current_thread())
        if conn is None:
            return True
        if logger.isEnabledFor(logging.DEBUG):
            record.msg, record.args = "%s (peer=%s)", (record.getMessage(), conn.peer)
            return True
        if not conn.first_problem:
            conn.first_problem = record.getMessage()
        conn.problems += 1
        return False


class EdgeAssociationSocket(AssociationSocket):
    """The accepted socket, read with deadlines and a PDU length limit.

    pynetdicom reads each PDU as ``recv(6)`` (the header) then ``recv(length)``; both reads
    here end by the connection's deadline: the A-ASSOCIATE-RQ deadline until a request
    arrived, else ``network_timeout`` from the start of the read.
    """

    def __init__(self, assoc: EdgeAssociation, conn: Connection, limits: ConnectionLimits) -> None:
        super().__init__(assoc, client_socket=conn.sock)
        self._conn = conn
        self._limits = limits
        self._at_header = True
        self._pdu_type = 0
        self._handshake_due = isinstance(conn.sock, ssl.SSLSocket)
        self.mid_pdu = False  # a PDU has started and is not complete
        conn.sock.settimeout(limits.network_timeout)  # sends too: a peer that never reads

    def _handshake(self) -> bool:
        """The TLS handshake, before the first read, by the A-ASSOCIATE-RQ deadline."""
        self._handshake_due = False
        conn, sock = self._conn, cast(ssl.SSLSocket, self.socket)
        try:
            sock.settimeout(max(0.01, conn.request_deadline - time.monotonic()))
            sock.do_handshake()
            return True
        except (OSError, ValueError) as exc:
            assoc = cast(EdgeAssociation, self.assoc)
            reason = handshake_failure_reason(exc)
            logger.warning("TLS handshake failed: peer=%s reason=%s", conn.peer, reason)
            assoc.server.count_refusal("tls_handshake")
            assoc.server.audit_refusal("connection", "closed", conn.peer, f"TLS handshake failed: {reason}")
            conn.quiet = True
            conn.cut()
            assoc.dul.to_user_queue.put(cast(Any, None))  # read as "no request": stop waiting
            return False

    @property
    def ready(self) -> bool:
        """pynetdicom's check for data, but waiting for it (or for something to send) instead
        of the DUL loop's 1 ms sleep (:mod:`dicom_node.receive.reactor`)."""
        if self.socket is None or self._is_connected is False:
            time.sleep(0.001)  # the loop no longer sleeps by itself: keep its pace
            return False
        try:
            return wait_readable(self.socket, cast(EdgeAssociation, self.assoc).dul)
        except (OSError, TimeoutError, ValueError):
            self.event_queue.put("Evt17")  # transport closed, as pynetdicom's check says
            return False

    def recv(self, nr_bytes: int) -> bytearray:
        conn = self._conn
        if self._handshake_due and not self._handshake():
            return bytearray()  # short: pynetdicom closes the transport (Evt17)
        sock = cast(socket.socket, self.socket)
        deadline = time.monotonic() + self._limits.network_timeout
        before_request = not conn.requested
        if before_request:
            deadline = min(deadline, conn.request_deadline)
        self.mid_pdu = True
        try:
            data, timed_out = _receive(sock, nr_bytes, deadline)
            if timed_out:
                raise TimeoutError
        except TimeoutError:
            assoc = cast(EdgeAssociation, self.assoc)
            if before_request:
                reason, kind = assoc.server._no_request_reason(), "request_timeout"
            else:
                reason = f"PDU stalled for {self._limits.network_timeout:g} s (network.network_timeout)"
                kind = "pdu_stalled"
            assoc.server.connection_failed(conn, reason, kind, wake=before_request)
            return data  # short: pynetdicom closes the transport (Evt17)
        finally:
            try:
                sock.settimeout(self._limits.network_timeout)
            except OSError:
                pass
        if len(data) < nr_bytes:
            assoc = cast(EdgeAssociation, self.assoc)
            if not assoc.is_established and assoc.requestor.primitive is None:
                # Closed before a request was accepted (e.g. pynetdicom aborted one it could
                # not decode): the association thread waiting for it can end now, not at the deadline.
                assoc.dul.to_user_queue.put(cast(Any, None))
        if self._at_header and nr_bytes == 6 and len(data) == 6:
            self._check_header(bytes(data))
        elif not self._at_header:
            self._at_header = True
            if self._pdu_type == 0x01 and len(data) == nr_bytes:
                conn.request_received = True
        self.mid_pdu = not self._at_header
        return data

    def _check_header(self, header: bytes) -> None:
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in _PDU_TYPES:
            return  # pynetdicom aborts without reading a body: the next read is a header
        self._at_header = False
        self._pdu_type = pdu_type
        limit = self._limits.maximum_pdu_size if pdu_type == 0x04 else MAX_CONTROL_PDU
        if limit and length > limit:
            conn = self._conn
            assoc = cast(EdgeAssociation, self.assoc)
            abort = A_ABORT_RQ()
            abort.source = 0x02  # service provider
            abort.reason_diagnostic = 0x06  # invalid PDU parameter value
            try:
                cast(socket.socket, self.socket).sendall(abort.encode())
            except OSError:
                pass
            # The body read that follows is short: pynetdicom closes the transport (Evt17).
            assoc.server.connection_failed(
                conn, f"PDU of {length} bytes announced, the node accepts at most {limit}: A-ABORT sent",
                "pdu_too_large", wake=not conn.requested,
            )


def _receive(sock: socket.socket, nr_bytes: int, deadline: float) -> tuple[bytearray, bool]:
    """Read up to ``nr_bytes`` from ``sock`` by ``deadline`` (monotonic): ``(data, timed_out)``;
    ``data`` is short when the peer closed or the deadline passed.

    The bytes go straight into one buffer (``recv_into``, as much per call as the kernel
    has): no chunk objects to join, one copy of every received byte fewer and far fewer
    calls per 128 KiB PDU. The buffer grows by at most :data:`_GROW_BYTES` ahead of what
    arrived, so a peer that announces a huge PDU and sends nothing costs no memory.
    """
    data = bytearray(min(nr_bytes, _GROW_BYTES))
    got = 0
    timed_out = False
    while True:
        with memoryview(data) as view:
            while got < len(data):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                sock.settimeout(remaining)
                try:
                    n = sock.recv_into(view[got:])
                except TimeoutError:
                    timed_out = True
                    break
                if not n:
                    break  # closed by the peer (or cut): pynetdicom sees a short read
                got += n
        if got < len(data) or len(data) == nr_bytes:  # short (closed, timed out) or complete
            break
        data.extend(bytes(min(_GROW_BYTES, nr_bytes - len(data))))
    del data[got:]
    return data, timed_out


class EdgeDIMSE(DIMSEServiceProvider):
    """A DIMSE message that does not decode aborts its association (A-ABORT) with one
    line, instead of raising in the DUL reactor thread (which killed it silently)."""

    def get_msg(self, block: bool = False) -> tuple[Any, Any]:
        """The association loop's non-blocking look waits a little for the message (reactor)."""
        return super().get_msg(block) if block else next_message(self)

    def receive_primitive(self, primitive: P_DATA) -> None:
        try:
            super().receive_primitive(primitive)
        except Exception as exc:
            self.message = None
            assoc = cast(EdgeAssociation, self.assoc)
            assoc.abort_reason = f"DIMSE message does not decode ({type(exc).__name__})"
            if assoc.connection is not None:
                assoc.connection.quiet = True
            self.dul.event_queue.put("Evt19")  # invalid PDU: A-ABORT to the peer (AA-8)


class EdgeACSE(ACSE):
    """Counts ``max_associations`` over requests the node would accept."""

    def _negotiate_as_acceptor(self) -> None:
        assoc = cast(EdgeAssociation, self.assoc)
        if assoc.connection is not None and not assoc.server.take_slot(assoc.connection):
            assoc.reject_reason = (
                f"local limit (max_associations: {assoc.server.limits.max_associations} associations open)"
            )
            assoc.server.count_refusal("max_associations")  # its line and audit record: EVT_REJECTED
            self.send_reject(0x02, 0x03, 0x02)  # transient, service provider, local limit exceeded
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        super()._negotiate_as_acceptor()


class EdgeAssociation(Association):
    """An acceptor association bound to its :class:`Connection`."""

    def __init__(self, ae: ApplicationEntity, server: EdgeAssociationServer, conn: Connection) -> None:
        super().__init__(ae, MODE_ACCEPTOR)
        self.dul = WakeableDUL(self)  # woken by data and by sends, not polled (receive.reactor)
        self.network_timeout = ae.network_timeout  # the timers live in the DUL: set them on this one
        self.server = server
        self.connection: Connection | None = conn
        self.reject_reason = ""
        self.abort_reason = ""
        self.acse = EdgeACSE(self)
        self.dimse = EdgeDIMSE(self)
        self.dul.daemon = True  # a peer that never closes cannot keep the process alive
        # pynetdicom waits acse_timeout for the request and the ARTIM timer (idle socket)
        # uses it too; the request deadline is the shorter one.
        self.acse_timeout = min(ae.acse_timeout or 30, server.limits.association_request_timeout)
        self._started_at = time.monotonic()

    def _abort_blocking(self, block: bool = True) -> None:
        """pynetdicom's abort (``abort`` points here or at the non-blocking variant, which
        calls this), with the reason for the log when pynetdicom aborts on its own."""
        if not self.abort_reason and self.dul.idle_timer_expired():
            sock = self.dul.socket
            stalled = isinstance(sock, EdgeAssociationSocket) and sock.mid_pdu
            timeout = self.server.limits.network_timeout
            self.abort_reason = (
                f"PDU stalled for {timeout:g} s" if stalled else f"nothing received for {timeout:g} s"
            ) + " (network.network_timeout)"
        if self.connection is not None and self.abort_reason:
            self.connection.quiet = True  # the aborted-association line says why
        super()._abort_blocking(block)

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        finally:
            self.server.connection_ended(self)


class EdgeRequestHandler(RequestHandler):
    """Builds an :class:`EdgeAssociation` for an accepted connection."""

    server: EdgeAssociationServer

    def handle(self) -> None:
        conn = self.server.take_pending(self.request)
        assoc = self._create_edge_association(conn)
        conn.assoc = assoc
        self.server.register_threads(conn, assoc)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()

    def _create_edge_association(self, conn: Connection) -> EdgeAssociation:
        """pynetdicom's ``RequestHandler._create_association``, with the edge classes."""
        assoc = EdgeAssociation(self.ae, self.server, conn)
        assoc._server = self.server
        timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
        assoc.name = f"AcceptorThread@{timestamp}"
        assoc.set_socket(EdgeAssociationSocket(assoc, conn, self.server.limits))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    handler = cast(Any, handler)
                    assoc.bind(event, handler[0], handler[1])
        return assoc


@dataclass
class _Lingering:
    sock: socket.socket
    close_at: float


@dataclass
class _Registry:
    by_socket: dict[socket.socket, Connection] = field(default_factory=dict)
    by_thread: dict[threading.Thread, Connection] = field(default_factory=dict)
    per_host: dict[str, int] = field(default_factory=dict)
    lingering: list[_Lingering] = field(default_factory=list)


class EdgeAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the connection policy of this module.

    Built with :meth:`pynetdicom.ae.ApplicationEntity.make_server` (``server_class``) and
    the keyword ``limits``; it binds and listens at once, and accepts once
    :meth:`serve_forever` runs (:func:`start_edge_server`).
    """

    # The listen backlog: connections from a burst (or a flood) wait here instead of being
    # refused while the accept loop catches up.
    request_queue_size = 128

    def __init__(
        self,
        *args: Any,
        limits: ConnectionLimits,
        slots: SlotPool | None = None,
        audit: AuditLog | None = None,
        metrics: NodeMetrics | None = None,
        **kwargs: Any,
    ) -> None:
        self.limits = limits
        self.slots = slots or SlotPool(limits.max_associations)
        self.audit = audit
        self.metrics = metrics
        self._lock = threading.Lock()
        self._registry = _Registry()
        self._rejection_log = _RateLimitedLog(REJECTION_LOG_INTERVAL)
        self._log_filter = PynetdicomLineLimit(self)
        kwargs["request_handler"] = EdgeRequestHandler
        super().__init__(*args, **kwargs)
        for logger_ in pynetdicom_loggers():
            logger_.addFilter(self._log_filter)

    # ----- accepting -----------------------------------------------------------------------

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection; on the TLS port wrap it without the handshake (done in the
        connection's reader, :meth:`EdgeAssociationSocket._handshake`)."""
        client_socket, address = cast(socket.socket, self.socket).accept()
        no_delay_socket(client_socket)  # each C-STORE response at once (dicom_node.tcp)
        if self.ssl_context is None:
            return client_socket, address
        try:
            wrapped = self.ssl_context.wrap_socket(client_socket, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError):
            client_socket.close()
            raise  # socketserver drops the request quietly on OSError
        return wrapped, address

    def process_request(self, request: Any, client_address: Any) -> None:
        """In the accept thread: refuse over the per-host limit, else start the association.

        No thread per connection here: the association starts its own.
        """
        host, port = str(client_address[0]), int(client_address[1])
        now = time.monotonic()
        with self._lock:
            open_here = self._registry.per_host.get(host, 0)
            if open_here >= self.limits.max_associations_per_host:
                over_limit = True
            else:
                over_limit = False
                conn = Connection(
                    host, port, request, now, now + self.limits.association_request_timeout
                )
                self._registry.by_socket[request] = conn
                self._registry.per_host[host] = open_here + 1
        if over_limit:
            self._refuse(request, host, port, open_here)
            return
        try:
            self.finish_request(request, client_address)
        except Exception:
            logger.exception("cannot start an association for peer %s:%d", host, port)
            with self._lock:
                conn = self._registry.by_socket.pop(request, conn)
            self._forget(conn)
            self.shutdown_request(request)

    def _refuse(self, sock: socket.socket, host: str, port: int, open_here: int) -> None:
        """A-ASSOCIATE-RJ (transient, service provider, local limit exceeded), then close."""
        reason = (
            f"local limit (per-host: {open_here} connections open from this address, network.max_associations_per_host)"
        )
        self.count_refusal("per_host_limit")
        held = self._rejection_log.warning(("per-host", host), "association rejected: peer=%s:%d reason=%s", host, port, reason)
        if held is not None:
            self.audit_refusal("association", "rejected", peer_address(host, port), reason, held)
        rj = A_ASSOCIATE_RJ()
        rj.result, rj.source, rj.reason_diagnostic = 0x02, 0x03, 0x02
        try:
            sock.settimeout(0)
            sock.send(rj.encode())  # fits the empty send buffer
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        with self._lock:  # closed later: closing with the request unread would reset the RJ
            if len(self._registry.lingering) < _MAX_LINGERING:
                self._registry.lingering.append(_Lingering(sock, time.monotonic() + _LINGER_SECONDS))
                return
        sock.close()

    def take_pending(self, request: socket.socket) -> Connection:
        with self._lock:
            return self._registry.by_socket[request]

    def register_threads(self, conn: Connection, assoc: EdgeAssociation) -> None:
        with self._lock:
            self._registry.by_thread[assoc] = conn
            self._registry.by_thread[assoc.dul] = conn

    def connection_of_thread(self, thread: threading.Thread) -> Connection | None:
        return self._registry.by_thread.get(thread)  # a dict read: no lock in a log filter

    def take_slot(self, conn: Connection) -> bool:
        """Count ``conn`` against ``max_associations``; ``False`` when all are taken."""
        if not self.slots.take():
            return False
        with self._lock:
            conn.has_slot = True
        return True

    # ----- ending --------------------------------------------------------------------------

    def connection_failed(self, conn: Connection, reason: str, kind: str, wake: bool) -> None:
        """Cut ``conn`` for ``reason`` (``kind``: its metric label): one line, from the
        aborted-association line when it was established, else here. Called in its DUL
        thread; ``wake``: no request arrived, so the association thread that waits for one
        can stop now."""
        assoc = conn.assoc
        if assoc is not None and assoc.is_established:
            assoc.abort_reason = reason
            conn.quiet = True
        else:
            self.log_connection_closed(conn, reason, kind)
        conn.cut()
        if wake and assoc is not None:
            assoc.dul.to_user_queue.put(cast(Any, None))  # read as "no request in time"

    def _no_request_reason(self) -> str:
        return (
            f"no complete A-ASSOCIATE-RQ within {self.limits.association_request_timeout:g} s "
            "(network.association_request_timeout)"
        )

    def log_connection_closed(self, conn: Connection, reason: str, kind: str) -> None:
        """A connection ended before an association: counted by ``kind``, logged and audited
        at most once per host, reason and interval."""
        conn.quiet = True
        self.count_refusal(kind)
        held = self._rejection_log.warning(
            ("closed", conn.host, reason), "connection closed: peer=%s reason=%s", conn.peer, reason
        )
        if held is not None:
            self.audit_refusal("connection", "closed", conn.peer, reason, held)

    def count_refusal(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.connections_refused.labels(kind).inc()

    def audit_refusal(self, event: str, result: str, peer: str, reason: str, held_back: int = 0) -> None:
        if self.audit is not None:
            self.audit.record(event, result, called_ae=self.ae_title, peer=peer, detail=reason, held_back=held_back)

    def connection_ended(self, assoc: EdgeAssociation) -> None:
        """The association thread ends: close the socket, free the host's count and the slot."""
        conn = assoc.connection
        if conn is None:
            return
        # pynetdicom's kill() returns once its DUL is idle, but a DUL blocked in recv() on a
        # socket it already gave up on would stay; cut it and stop it.
        if conn.quiet:
            pass
        elif conn.problems:
            self.log_connection_closed(
                conn, f"{ascii(conn.first_problem)} ({conn.problems} message(s) from pynetdicom)", "protocol_error"
            )
        elif not conn.requested and time.monotonic() >= conn.request_deadline - 0.5:
            self.log_connection_closed(conn, self._no_request_reason(), "request_timeout")  # an idle socket
        conn.cut()
        assoc.dul.kill_dul()
        if assoc.dul.ident is None and isinstance(assoc.dul, WakeableDUL):
            assoc.dul.close_wake()  # its loop never ran, so it cannot close the pipe itself
        with self._lock:
            self._registry.by_socket.pop(conn.sock, None)
        self._forget(conn)

    def _forget(self, conn: Connection) -> None:
        with self._lock:
            if conn.closed:
                return
            conn.closed = True
            count = self._registry.per_host.get(conn.host, 1) - 1
            if count > 0:
                self._registry.per_host[conn.host] = count
            else:
                self._registry.per_host.pop(conn.host, None)
            had_slot, conn.has_slot = conn.has_slot, False
        if had_slot:
            self.slots.release()
        try:
            conn.sock.close()
        except OSError:
            pass

    def service_actions(self) -> None:
        """In the accept loop (every poll): deadlines the association threads missed, and
        refused sockets whose linger time is over."""
        super().service_actions()
        now = time.monotonic()
        with self._lock:
            overdue = [
                c for c in self._registry.by_socket.values()
                if not c.requested and now > c.request_deadline + 1.0
            ]
            # Threads stay known to the log filter until they end: a DUL thread may log last.
            for thread in [t for t in self._registry.by_thread if not t.is_alive() and t.ident is not None]:
                del self._registry.by_thread[thread]
            due = [s for s in self._registry.lingering if s.close_at <= now]
            self._registry.lingering = [s for s in self._registry.lingering if s.close_at > now]
        for conn in overdue:
            if not conn.quiet:
                self.log_connection_closed(conn, self._no_request_reason(), "request_timeout")
            conn.cut()
        for lingering in due:
            lingering.sock.close()

    def connections(self) -> list[Connection]:
        with self._lock:
            return list(self._registry.by_socket.values())

    def established_count(self) -> int:
        return sum(1 for c in self.connections() if c.assoc is not None and c.assoc.is_established)

    def close_connections(self, abort_wait: float = 1.0, join_wait: float = 3.0) -> int:
        """End every connection within about ``abort_wait + join_wait`` seconds.

        Established associations get an A-ABORT first; then every transport is closed,
        which also wakes a reader blocked on a stalled peer. Returns how many established
        associations were aborted.
        """
        conns = self.connections()
        established = [c for c in conns if c.assoc is not None and c.assoc.is_established]
        for conn in established:
            assert conn.assoc is not None
            conn.assoc.abort_reason = "node shutting down"
            conn.assoc.abort(block=False)  # queued; sent unless its reader is stuck
        deadline = time.monotonic() + abort_wait
        while any(not c.closed for c in established) and time.monotonic() < deadline:
            time.sleep(0.02)
        for conn in conns:
            if not conn.quiet and conn.problems:  # say what pynetdicom had to say, once
                self.log_connection_closed(
                    conn, f"{ascii(conn.first_problem)} ({conn.problems} message(s) from pynetdicom)", "protocol_error"
                )
            conn.quiet = True
            conn.cut()
            if conn.assoc is not None and not conn.requested:
                conn.assoc.dul.to_user_queue.put(cast(Any, None))  # stop waiting for a request
        deadline = time.monotonic() + join_wait
        for conn in conns:
            if conn.assoc is not None:
                conn.assoc.join(timeout=max(0.0, deadline - time.monotonic()))
        for conn in conns:  # whatever is left cannot hold the process: its threads are daemons
            if conn.assoc is not None and conn.assoc.is_alive():
                conn.assoc.dul.kill_dul()
                conn.assoc._kill = True
                self._forget(conn)
        with self._lock:
            lingering, self._registry.lingering = self._registry.lingering, []
        for item in lingering:
            item.sock.close()
        return len(established)

    def server_close(self) -> None:
        super().server_close()
        for logger_ in pynetdicom_loggers():
            logger_.removeFilter(self._log_filter)



def bind_edge_server(
    ae: ApplicationEntity,
    address: tuple[str, int],
    limits: ConnectionLimits,
    evt_handlers: list[Any],
    *,
    slots: SlotPool | None = None,
    ssl_context: ssl.SSLContext | None = None,
    audit: AuditLog | None = None,
    metrics: NodeMetrics | None = None,
) -> EdgeAssociationServer:
    """Bind and listen on ``address`` (raises :class:`OSError` when it is taken); accept
    nothing until :func:`serve_edge_server`. ``slots`` is shared by the node's listeners;
    ``ssl_context`` makes it a TLS listener; refusals at the edge are counted in ``metrics``
    and recorded in ``audit``."""
    # pynetdicom's own limit counts every thread, stalled connections included: ours replace it.
    ae.maximum_associations = 1_000_000
    return cast(
        EdgeAssociationServer,
        ae.make_server(
            address, evt_handlers=evt_handlers, server_class=EdgeAssociationServer, limits=limits, slots=slots,
            ssl_context=ssl_context, audit=audit, metrics=metrics,
        ),
    )


def serve_edge_server(ae: ApplicationEntity, server: EdgeAssociationServer) -> None:
    """Start accepting in a daemon thread (as ``AE.start_server(block=False)`` does)."""
    timestamp = datetime.strftime(datetime.now(), "%Y%m%d%H%M%S")
    thread = threading.Thread(
        target=make_target(server.serve_forever), name=f"AcceptorServer@{timestamp}", daemon=True
    )
    thread.start()
    ae._servers.append(server)

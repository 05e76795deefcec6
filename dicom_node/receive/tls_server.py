"""The TLS listener: pynetdicom's threaded server with the handshake moved off the accept loop.

pynetdicom wraps an accepted socket with ``do_handshake_on_connect=True`` in the thread that
accepts connections, on a blocking socket: one client that connects and sends nothing would
stall every other TLS connection. Here the handshake runs in the
connection's own thread, bounded by ``acse_timeout``; a failed one is one log line, never a
traceback, and the connection is closed before pynetdicom sees it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from datetime import datetime
from typing import Any, cast

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target

from dicom_node.tls import handshake_failure_reason

logger = logging.getLogger(__name__)


class TLSAssociationServer(ThreadedAssociationServer):
    """A :class:`~pynetdicom.transport.ThreadedAssociationServer` doing the TLS handshake per thread.

    The handshake timeout is the AE's ``acse_timeout``.
    """

    # A thread still in its handshake must not hold up shutdown: it ends with its timeout.
    daemon_threads = True
    block_on_close = False

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection and wrap it without handshaking (that is done per thread)."""
        listening = cast(socket.socket, self.socket)
        client_socket, address = listening.accept()
        context = cast(ssl.SSLContext, self.ssl_context)
        try:
            wrapped = context.wrap_socket(client_socket, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError):
            client_socket.close()
            raise  # socketserver drops the request silently on OSError
        return wrapped, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Finish the TLS handshake, then hand the connection to pynetdicom."""
        sock = cast(ssl.SSLSocket, request)
        host, port = client_address[0], client_address[1]
        try:
            sock.settimeout(float(self.ae.acse_timeout or 30))
            sock.do_handshake()
            sock.settimeout(None)  # as pynetdicom's plaintext sockets: blocking, it polls with select
        except (OSError, ValueError) as exc:
            logger.warning("TLS handshake failed: peer=%s:%s reason=%s", host, port, handshake_failure_reason(exc))
            self.shutdown_request(sock)
            return
        super().process_request_thread(request, client_address)


def start_tls_server(ae: AE, address: tuple[str, int], context: ssl.SSLContext, evt_handlers: list[Any]) -> TLSAssociationServer:
    """Start a non-blocking :class:`TLSAssociationServer` for ``ae``, like ``AE.start_server(block=False)``.

    ``AE.start_server`` has no ``server_class`` argument, so this mirrors its non-blocking
    branch: ``AE.make_server`` with our class, ``serve_forever`` in a daemon thread, and the
    server registered in the AE so that ``AE.shutdown`` and ``server.shutdown`` work as usual.
    """
    server = cast(
        TLSAssociationServer,
        ae.make_server(address, ssl_context=context, evt_handlers=evt_handlers, server_class=TLSAssociationServer),
    )
    timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
    thread = threading.Thread(target=make_target(server.serve_forever), name=f"AcceptorServer@{timestamp}-tls")
    thread.daemon = True
    thread.start()
    ae._servers.append(server)  # what start_server does; server.shutdown() removes it
    return server

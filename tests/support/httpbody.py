"""Shared pieces of the test servers (http.server handlers): request bodies (Content-Length or chunked transfer
encoding) and serving over HTTP or HTTPS."""

import http.server
import ssl


def read_body(handler):
    """The whole request body of `handler` (a BaseHTTPRequestHandler)."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
        return b"".join(chunks)
    return handler.rfile.read(int(handler.headers.get("Content-Length", 0) or 0))


def serve(handler_class, port, cert=None, key=None):
    """Serves `handler_class` on 127.0.0.1:`port` forever, one thread per connection; HTTPS with `cert` and `key`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler_class)
    server.daemon_threads = True
    if cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()

"""Request bodies for the test proxies (http.server handlers): Content-Length or chunked transfer encoding."""


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

"""A real HTTP server on 127.0.0.1 in a daemon thread, for the tests' local servers and stand-ins."""

import threading
from http.server import ThreadingHTTPServer


class LocalHttpServer:
    """Bind with ``_bind(handler_class)`` in ``__init__``; use the instance as a context manager."""

    thread_name = "test-http"

    def _bind(self, handler_class):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
        self.httpd.daemon_threads = True
        self.base = self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=self.thread_name, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

"""Answer every request with 200 and nothing else: the baseline for bench/webhooks."""

from __future__ import annotations


def app(environ, start_response):
    """Drain the body and return 200."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]

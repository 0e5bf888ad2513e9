"""Serve fake OpenAI and Anthropic model APIs on loopback for tests and benchmarks.

The official ``openai`` and ``anthropic`` SDKs talk to :class:`FakeModelServer`
through ``base_url``; the server speaks the real wire formats (success bodies,
error bodies, status codes, ``Retry-After``) so that the SDKs raise their real
exception classes.

This module also holds :class:`LoopbackServer`, the threaded HTTP plumbing
(request recording, fault scripting, latency) shared with
:mod:`vocoeng.testing.fake_graph`.

Run ``python -m vocoeng.testing.fake_ai --port 8099 --latency 1.0`` for a
standalone server.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from types import FrameType, TracebackType
from typing import Any, ClassVar

logger = logging.getLogger(__name__)

__all__ = [
    "FakeModelServer",
    "LoopbackServer",
    "RecordedRequest",
    "Reply",
    "Responder",
]

# Header names never written into recorded requests, so secrets do not leak
# into assertion messages or benchmark dumps.
_SECRET_HEADERS = frozenset(
    {"authorization", "x-api-key", "x-aisensy-project-api-pwd", "cookie"}
)

# Keys whose values are protocol plumbing rather than prompt text; they are
# skipped when estimating token counts.
_NON_TEXT_KEYS = frozenset(
    {"role", "type", "id", "tool_use_id", "tool_call_id", "cache_control"}
)

# The assistant answer a responder may script: plain text, a dict with
# "content" and/or "tool_calls", or None for the default echo reply.
Responder = Callable[[str, Any], str | Mapping[str, Any] | None]


@dataclass
class RecordedRequest:
    """Describe one request received by a loopback server."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    time: float
    status: int | None = None

    @property
    def model(self) -> str | None:
        """Return the ``model`` field of a JSON object body, if any."""
        if isinstance(self.body, dict):
            model = self.body.get("model")
            return model if isinstance(model, str) else None
        return None


@dataclass
class Reply:
    """Describe the answer a loopback server sends for one request."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    disconnect: bool = False


@dataclass
class _FaultRule:
    kind: str
    remaining: int | None  # None means persistent (always_fail)
    path: str | None
    target: str | None
    opts: dict[str, Any]

    def matches(self, path: str, target: str | None) -> bool:
        if self.path is not None and self.path != path:
            return False
        return self.target is None or self.target == target


class _Handler(BaseHTTPRequestHandler):
    """Translate raw HTTP/1.1 exchanges into ``LoopbackServer.respond`` calls."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY a client's
    # delayed ACK can add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    # Idle keep-alive connections each pin a thread; drop them like nginx does.
    timeout = 75
    server: _HTTPServer

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Consume optional trailers up to the blank line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        owner = self.server.owner
        raw = self._read_body()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        path = self.path.split("?", 1)[0]
        headers = {k.lower(): v for k, v in self.headers.items()}
        record = owner._record(self.command, path, headers, body)
        try:
            reply = owner.respond(self.command, path, headers, body)
        except Exception:
            logger.exception("fake server failed on %s %s", self.command, path)
            reply = Reply(500, {"error": {"message": "fake server crashed"}})
        record.status = reply.status
        logger.debug("%s %s -> %s", self.command, path, reply.status)
        # A request cut short by stop() must not look like a normal answer.
        if reply.disconnect or owner._stopping.is_set():
            record.status = None
            self.close_connection = True
            return
        payload = json.dumps(reply.body).encode() if reply.body is not None else b""
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # The default makes server_close() join every handler thread, so stop()
    # would wait out hangs and idle keep-alive connections.
    block_on_close = False
    allow_reuse_address = True
    # Benchmarks open hundreds of connections at once; the default backlog of
    # 5 would make the kernel drop SYNs and add 1 s retransmit stalls.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], owner: LoopbackServer) -> None:
        self.owner = owner
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can
        # stall for seconds on machines without a resolver.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out and hang up are expected here; stay quiet.
        logger.debug("connection from %s ended with an error", client_address)

    def close_open_connections(self) -> None:
        """Shut every accepted socket so blocked handler threads exit promptly."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class LoopbackServer:
    """Run a threaded HTTP/1.1 server on loopback that records and scripts faults.

    Subclasses implement :meth:`respond` and list their fault kinds in
    ``FAULT_KINDS``. Handler threads call ``respond`` concurrently, so
    subclasses must only touch shared state through the helpers here.
    """

    #: Fault kinds accepted by :meth:`_add_fault`; "hang" and "disconnect" are
    #: handled generically by :meth:`_apply_fault`.
    FAULT_KINDS: ClassVar[frozenset[str]] = frozenset({"hang", "disconnect"})

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._faults: list[_FaultRule] = []

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> LoopbackServer:
        """Bind the port and serve in a background daemon thread."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _HTTPServer((self.host, self._port), self)
        # Keep the port so a stop()/start() cycle serves at the same URL.
        self._port = self._httpd.server_port
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers and close open connections."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        # Wake handlers sleeping in latency/hang or blocked reading an idle
        # keep-alive connection so they do not outlive the server.
        self._stopping.set()
        httpd.close_open_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """Return the bound TCP port (requires :meth:`start`)."""
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    @property
    def url(self) -> str:
        """Return ``http://host:port`` without a trailing slash."""
        return f"http://{self.host}:{self.port}"

    # -- recording ---------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Return a snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def calls(self, path: str | None = None) -> list[RecordedRequest]:
        """Return recorded requests, optionally only those for ``path``."""
        return [r for r in self.requests if path is None or r.path == path]

    def reset(self) -> None:
        """Forget recorded requests and scripted faults."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()

    def _record(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> RecordedRequest:
        clean = {k: v for k, v in headers.items() if k not in _SECRET_HEADERS}
        record = RecordedRequest(method, path, clean, body, time.time())
        with self._lock:
            self._requests.append(record)
        return record

    # -- faults ------------------------------------------------------------

    def clear_faults(self) -> None:
        """Drop queued and persistent faults."""
        with self._lock:
            self._faults.clear()

    def _add_fault(
        self,
        kind: str,
        count: int | None,
        path: str | None,
        target: str | None,
        opts: dict[str, Any],
    ) -> None:
        kind = str(kind)
        if kind not in self.FAULT_KINDS:
            known = ", ".join(sorted(self.FAULT_KINDS))
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {known}")
        if count is not None and count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._faults.append(_FaultRule(kind, count, path, target, opts))

    def _take_fault(self, path: str, target: str | None) -> _FaultRule | None:
        """Consume and return the first fault matching this request, if any."""
        with self._lock:
            # One-shot faults win over persistent ones so a test can stack a
            # single 429 on top of an always-broken model.
            ordered = [f for f in self._faults if f.remaining is not None] + [
                f for f in self._faults if f.remaining is None
            ]
            for rule in ordered:
                if not rule.matches(path, target):
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        self._faults.remove(rule)
                return rule
        return None

    def _apply_fault(self, rule: _FaultRule, path: str) -> Reply | None:
        """Return the reply for ``rule``, or None when the request should go on.

        "hang" sleeps and then lets the request be answered normally, which is
        what a slow upstream looks like to a client with a longer timeout.
        """
        if rule.kind == "hang":
            self.sleep(float(rule.opts.get("seconds", 30.0)))
            return None
        if rule.kind == "disconnect":
            return Reply(0, disconnect=True)
        return self.fault_reply(rule.kind, path, rule.opts)

    def sleep(self, seconds: float) -> None:
        """Sleep in a handler thread, returning early when the server stops."""
        if seconds > 0:
            self._stopping.wait(seconds)

    # -- hooks for subclasses ---------------------------------------------

    def respond(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> Reply:
        """Build the reply for one request (called from handler threads)."""
        raise NotImplementedError

    def fault_reply(self, kind: str, path: str, opts: dict[str, Any]) -> Reply:
        """Build the provider-shaped error reply for a status-code fault."""
        raise NotImplementedError


# ---------------------------------------------------------------------------
# Model API fake
# ---------------------------------------------------------------------------

_OPENAI_PATH = "/v1/chat/completions"
_ANTHROPIC_PATH = "/v1/messages"


def count_tokens(value: Any) -> int:
    """Estimate tokens as whitespace-separated words in every text leaf."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(count_tokens(v) for v in value)
    if isinstance(value, dict):
        return sum(count_tokens(v) for k, v in value.items() if k not in _NON_TEXT_KEYS)
    return 0


def _text_of(content: Any) -> str:
    """Flatten message content (string or list of parts/blocks) into text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict):
            if isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif part.get("type") == "tool_result":
                parts.append(_text_of(part.get("content")))
    return " ".join(p for p in parts if p)


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def tool_results(messages: list[Any]) -> list[tuple[str, str, bool]]:
    """Return (call id, content, is_error) of the tool results after the last
    assistant turn, in either protocol; [] when the model has not been given any.
    """
    found: list[tuple[str, str, bool]] = []
    for message in reversed(messages):
        if not isinstance(message, dict):
            continue
        if message.get("role") == "tool":  # OpenAI
            content = _text_of(message.get("content"))
            found.append((str(message.get("tool_call_id")), content, False))
            continue
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, list):
            blocks = [
                b
                for b in content
                if isinstance(b, dict) and b.get("type") == "tool_result"
            ]
            found.extend(
                (
                    str(b.get("tool_use_id")),
                    _text_of(b.get("content")),
                    bool(b.get("is_error")),
                )
                for b in reversed(blocks)
            )
        break
    return list(reversed(found))


def offered_tools(body: Mapping[str, Any]) -> list[str]:
    """Return the names of the tools a request offers, in either protocol."""
    names = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            names.append(name or tool.get("name"))
    return [n for n in names if isinstance(n, str)]


def _arguments_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _tool_turns(messages: list[Any]) -> int:
    """Return how many assistant turns in ``messages`` asked for tools."""
    count = 0
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        content = message.get("content")
        if message.get("tool_calls") or (
            isinstance(content, list)
            and any(
                isinstance(b, dict) and b.get("type") == "tool_use" for b in content
            )
        ):
            count += 1
    return count


def _tool_choice_none(body: Mapping[str, Any]) -> bool:
    choice = body.get("tool_choice")
    return choice == "none" or (
        isinstance(choice, dict) and choice.get("type") == "none"
    )


def _new_id(prefix: str, length: int = 24) -> str:
    return prefix + uuid.uuid4().hex[:length]


def _retry_after(opts: Mapping[str, Any], default: float | None) -> dict[str, str]:
    value = opts.get("retry_after", default)
    if value is None:
        return {}
    # "%g" keeps integers integral ("2") while allowing sub-second test
    # delays ("0.2"), which both SDKs parse as float seconds.
    return {"Retry-After": f"{float(value):g}"}


class FakeModelServer(LoopbackServer):
    """Serve fake OpenAI chat-completions and Anthropic messages endpoints.

    Point ``openai.OpenAI(base_url=server.base_url, ...)`` and
    ``anthropic.Anthropic(base_url=server.anthropic_base_url, ...)`` at it.
    Any API key is accepted except ``"bad-key"`` (and a missing one).
    """

    FAULT_KINDS: ClassVar[frozenset[str]] = LoopbackServer.FAULT_KINDS | {
        "400",
        "429",
        "500",
        "503",
        "529",
    }
    BAD_KEY: ClassVar[str] = "bad-key"

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0
    ) -> None:
        super().__init__(host, port)
        #: Seconds slept before every successful answer.
        self.latency = latency
        self._responder: Responder | None = None

    def __enter__(self) -> FakeModelServer:
        self.start()
        return self

    @property
    def base_url(self) -> str:
        """Return the OpenAI SDK base URL (``http://127.0.0.1:PORT/v1``)."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """Return the Anthropic SDK base URL (the SDK appends ``/v1/messages``)."""
        return self.url

    # -- scripting -----------------------------------------------------------

    def enqueue_fault(
        self,
        kind: str,
        count: int = 1,
        path: str | None = None,
        model: str | None = None,
        **opts: Any,
    ) -> None:
        """Fail the next ``count`` matching requests with ``kind``.

        Kinds: "400" (context length exceeded), "429" (``retry_after`` seconds,
        default 1), "500", "503", "529" (overloaded), "hang" (sleep
        ``seconds``, default 30, then answer) and "disconnect" (close the
        socket without answering). ``message`` overrides the error text and
        ``retry_after`` adds a Retry-After header to any error kind.
        """
        self._add_fault(kind, count, path, model, opts)

    def always_fail(
        self,
        kind: str,
        model: str | None = None,
        path: str | None = None,
        **opts: Any,
    ) -> None:
        """Fail every matching request with ``kind`` until :meth:`clear_faults`."""
        self._add_fault(kind, None, path, model, opts)

    def set_responder(self, responder: Responder | None) -> None:
        """Script replies with ``responder(path, body)``; None restores the echo.

        The callable returns a str (assistant text), a dict with optional
        ``"content"`` and ``"tool_calls"`` (``[{"name", "arguments": dict}]``)
        and ``"ignore_tool_choice"`` (keep the calls under tool_choice "none"),
        or None for the default ``"[<model>] reply to: <last user text>"``.
        """
        self._responder = responder

    def script_tools(
        self,
        *calls: tuple[str, Mapping[str, Any] | str],
        rounds: int | None = 1,
        ignore_tool_choice: bool = False,
    ) -> None:
        """Make the model ask for ``calls`` (``(tool name, arguments)``) in a turn.

        Keyed on each request, not on a counter: while a request's messages hold
        fewer than ``rounds`` earlier tool-calling turns (``None``: always) and
        it offers every named tool, the model asks for them; otherwise it
        answers with the default reply, which quotes the tool results it got.
        Arguments given as a str are sent as written (broken JSON included);
        ``ignore_tool_choice`` asks even when told not to, as some
        OpenAI-compatible servers do.
        """
        names = [name for name, _ in calls]

        def responder(path: str, body: Any) -> Mapping[str, Any] | None:
            offered = offered_tools(body)
            if not all(name in offered for name in names):
                return None
            if rounds is not None and _tool_turns(body["messages"]) >= rounds:
                return None
            return {
                "tool_calls": [
                    {
                        "name": name,
                        "arguments": arguments
                        if isinstance(arguments, str)
                        else dict(arguments),
                    }
                    for name, arguments in calls
                ],
                "ignore_tool_choice": ignore_tool_choice,
            }

        self.set_responder(responder)

    def reset(self) -> None:
        """Forget recorded requests, scripted faults and the responder."""
        super().reset()
        self._responder = None

    # -- request handling ----------------------------------------------------

    def respond(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> Reply:
        """Route a request to the OpenAI or Anthropic implementation."""
        if path == _OPENAI_PATH and method == "POST":
            return self._openai(headers, body)
        if path == _ANTHROPIC_PATH and method == "POST":
            return self._anthropic(headers, body)
        if path.startswith("/v1/messages") or "anthropic-version" in headers:
            return _anthropic_error(
                404, "not_found_error", f"Not found: {method} {path}"
            )
        return _openai_error(404, f"Invalid URL ({method} {path})", None)

    def fault_reply(self, kind: str, path: str, opts: dict[str, Any]) -> Reply:
        """Build the provider-shaped error reply for a status-code fault."""
        message = opts.get("message")
        if path == _ANTHROPIC_PATH:
            return _anthropic_fault(kind, message, opts)
        return _openai_fault(kind, message, opts)

    def _script(self, path: str, body: dict[str, Any]) -> tuple[str, list[dict]]:
        """Return (text, tool_calls) for a valid request body."""
        responder = self._responder
        result = responder(path, body) if responder is not None else None
        if result is None:
            model = body.get("model")
            results = tool_results(body["messages"])
            if results:
                # Like a model answering from the tool output it was given.
                shown = "; ".join(content for _, content, _ in results)
                return f"[{model}] tool result: {shown}", []
            return f"[{model}] reply to: {_last_user_text(body['messages'])}", []
        if isinstance(result, str):
            return result, []
        text = result.get("content") or ""
        calls = []
        for call in result.get("tool_calls") or []:
            arguments = call.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    pass  # sent as written: models do emit broken JSON
            calls.append(
                {"id": call.get("id"), "name": call["name"], "args": arguments}
            )
        if calls and _tool_choice_none(body) and not result.get("ignore_tool_choice"):
            # A real model told not to call tools answers in text instead.
            calls = []
            text = text or f"[{body.get('model')}] answered without tools"
        return str(text), calls

    def _openai(self, headers: dict[str, str], body: Any) -> Reply:
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not key:
            return _openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key "
                "in an Authorization header using Bearer auth.",
                None,
            )
        if key == self.BAD_KEY:
            return _openai_error(
                401,
                f"Incorrect API key provided: {key}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_api_key",
            )
        if not isinstance(body, dict):
            return _openai_error(
                400,
                "We could not parse the JSON body of your request.",
                None,
            )
        rule = self._take_fault(_OPENAI_PATH, body.get("model"))
        if rule is not None:
            reply = self._apply_fault(rule, _OPENAI_PATH)
            if reply is not None:
                return reply
        problem = _openai_problem(body)
        if problem is not None:
            return _openai_error(400, problem[0], None, param=problem[1])
        text, calls = self._script(_OPENAI_PATH, body)
        self.sleep(self.latency)

        prompt_tokens = count_tokens(body["messages"]) + count_tokens(body.get("tools"))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish_reason = "tool_calls" if calls else "stop"
        if not calls and isinstance(limit, int) and count_tokens(text) > limit:
            text = " ".join(text.split()[:limit])
            finish_reason = "length"
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text or None,
            "refusal": None,
            "annotations": [],
        }
        if calls:
            message["tool_calls"] = [
                {
                    "id": call["id"] or _new_id("call_"),
                    "type": "function",
                    "function": {
                        "name": call["name"],
                        "arguments": _arguments_text(call["args"]),
                    },
                }
                for call in calls
            ]
        completion_tokens = count_tokens(text) + sum(
            count_tokens(_arguments_text(c["args"])) for c in calls
        )
        return Reply(
            200,
            {
                "id": _new_id("chatcmpl-", 29),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                    "prompt_tokens_details": {"cached_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 0},
                },
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
            },
            {"x-request-id": _new_id("req_", 32)},
        )

    def _anthropic(self, headers: dict[str, str], body: Any) -> Reply:
        # The anthropic SDK (2.x) sends api_key as "Authorization: Bearer",
        # while curl examples and older SDKs use "x-api-key"; accept both.
        key = headers.get("x-api-key", "").strip()
        auth = headers.get("authorization", "")
        if not key and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if not key or key == self.BAD_KEY:
            return _anthropic_error(401, "authentication_error", "invalid x-api-key")
        if not headers.get("anthropic-version"):
            return _anthropic_error(
                400, "invalid_request_error", "anthropic-version: header is required"
            )
        if not isinstance(body, dict):
            return _anthropic_error(
                400, "invalid_request_error", "There was an error parsing the body."
            )
        rule = self._take_fault(_ANTHROPIC_PATH, body.get("model"))
        if rule is not None:
            reply = self._apply_fault(rule, _ANTHROPIC_PATH)
            if reply is not None:
                return reply
        problem = _anthropic_problem(body)
        if problem is not None:
            return _anthropic_error(400, "invalid_request_error", problem)
        text, calls = self._script(_ANTHROPIC_PATH, body)
        self.sleep(self.latency)

        input_tokens = (
            count_tokens(body["messages"])
            + count_tokens(body.get("system"))
            + count_tokens(body.get("tools"))
        )
        stop_reason = "tool_use" if calls else "end_turn"
        limit = body["max_tokens"]
        if not calls and count_tokens(text) > limit:
            text = " ".join(text.split()[:limit])
            stop_reason = "max_tokens"
        content: list[dict[str, Any]] = []
        if text:
            content.append({"type": "text", "text": text})
        content.extend(
            {
                "type": "tool_use",
                "id": call["id"] or _new_id("toolu_"),
                "name": call["name"],
                "input": call["args"] if isinstance(call["args"], dict) else {},
            }
            for call in calls
        )
        output_tokens = count_tokens(text) + sum(
            count_tokens(_arguments_text(c["args"])) for c in calls
        )
        return Reply(
            200,
            {
                "id": _new_id("msg_"),
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            },
            {"request-id": _new_id("req_")},
        )


def _openai_problem(body: dict[str, Any]) -> tuple[str, str] | None:
    """Return (message, param) in OpenAI's wording, or None if valid."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "Missing required parameter: 'model'.", "model"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "Missing required parameter: 'messages'.", "messages"
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in {"system", "developer", "user", "assistant", "tool"}:
            param = f"messages[{i}].role"
            return f"Invalid value for '{param}'.", param
    if body.get("stream"):
        return "Unsupported value: 'stream' is not supported by the fake.", "stream"
    return _openai_tool_problem(messages)


def _openai_tool_problem(messages: list[dict[str, Any]]) -> tuple[str, str] | None:
    """Check tool turns the way OpenAI does: every call answered, in order."""
    pending: set[str] = set()
    for i, message in enumerate(messages):
        param = f"messages.[{i}].role"
        if message["role"] == "tool":
            if message.get("tool_call_id") not in pending:
                return (
                    "Invalid parameter: messages with role 'tool' must be a "
                    "response to a preceeding message with 'tool_calls'.",
                    param,
                )
            pending.discard(message["tool_call_id"])
            continue
        if pending:
            return (
                "An assistant message with 'tool_calls' must be followed by tool "
                "messages responding to each 'tool_call_id'. The following "
                f"tool_call_ids did not have response messages: {sorted(pending)}",
                param,
            )
        for call in message.get("tool_calls") or []:
            pending.add(call.get("id"))
    return None


def _anthropic_problem(body: dict[str, Any]) -> str | None:
    """Return a validation message in Anthropic's wording, or None if valid."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: Field required"
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in {"user", "assistant"}:
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
    if body.get("stream"):
        return "stream: streaming is not supported by FakeModelServer"
    return _anthropic_tool_problem(messages, bool(body.get("tools")))


def _blocks(message: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") == kind]


def _anthropic_tool_problem(messages: list[dict[str, Any]], tools: bool) -> str | None:
    """Check tool blocks the way Anthropic does: tools declared, ids paired."""
    previous: set[str] = set()
    for i, message in enumerate(messages):
        uses = {b.get("id") for b in _blocks(message, "tool_use")}
        results = {b.get("tool_use_id") for b in _blocks(message, "tool_result")}
        if (uses or results) and not tools:
            return (
                "Requests which include `tool_use` or `tool_result` blocks must "
                "define tools."
            )
        if results - previous:
            return (
                f"messages.{i}.content: unexpected `tool_use_id` found in "
                f"`tool_result` blocks: {sorted(results - previous)}. Each "
                "`tool_result` block must have a corresponding `tool_use` block in "
                "the previous message."
            )
        if previous - results:
            return (
                f"messages.{i - 1}: `tool_use` ids were found without "
                f"`tool_result` blocks immediately after: {sorted(previous - results)}"
            )
        previous = uses
    return None


def _openai_error(
    status: int,
    message: str,
    code: str | None,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    error = {"message": message, "type": type_, "param": param, "code": code}
    all_headers = {"x-request-id": _new_id("req_", 32), **(headers or {})}
    return Reply(status, {"error": error}, all_headers)


def _anthropic_error(
    status: int, type_: str, message: str, headers: dict[str, str] | None = None
) -> Reply:
    request_id = _new_id("req_")
    body = {
        "type": "error",
        "error": {"type": type_, "message": message},
        "request_id": request_id,
    }
    return Reply(status, body, {"request-id": request_id, **(headers or {})})


def _openai_fault(kind: str, message: str | None, opts: dict[str, Any]) -> Reply:
    if kind == "429":
        return _openai_error(
            429,
            message
            or "Rate limit reached for requests in organization org-fake on "
            "requests per min (RPM): Limit 3, Used 3, Requested 1. "
            "Please try again in 1s.",
            "rate_limit_exceeded",
            type_="requests",
            headers={
                **_retry_after(opts, 1),
                "x-ratelimit-remaining-requests": "0",
            },
        )
    if kind == "400":
        return _openai_error(
            400,
            message
            or "This model's maximum context length is 128000 tokens. However, "
            "your messages resulted in 131072 tokens. Please reduce the length "
            "of the messages.",
            "context_length_exceeded",
            param="messages",
            headers=_retry_after(opts, None),
        )
    default = {
        "500": "The server had an error while processing your request. Sorry "
        "about that!",
        "503": "The engine is currently overloaded, please try again later.",
        "529": "The server is overloaded, please try again later.",
    }[kind]
    return _openai_error(
        int(kind),
        message or default,
        None,
        type_="server_error",
        headers=_retry_after(opts, None),
    )


def _anthropic_fault(kind: str, message: str | None, opts: dict[str, Any]) -> Reply:
    type_, default, fallback_retry = {
        "400": (
            "invalid_request_error",
            "prompt is too long: 210000 tokens > 200000 maximum",
            None,
        ),
        "429": (
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of "
            "50 requests per minute. Please try again later.",
            1,
        ),
        "500": ("api_error", "Internal server error", None),
        "503": ("api_error", "Service unavailable", None),
        "529": ("overloaded_error", "Overloaded", None),
    }[kind]
    headers = _retry_after(opts, fallback_retry)
    if kind == "429":
        headers["anthropic-ratelimit-requests-remaining"] = "0"
    return _anthropic_error(int(kind), type_, message or default, headers)


def serve_cli(
    factory: Callable[..., LoopbackServer],
    *,
    default_port: int,
    argv: list[str] | None = None,
) -> None:
    """Run ``factory(host=, port=, latency=)`` in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(description=factory.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("-v", "--verbose", action="store_true", help="log requests")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
    )
    server = factory(host=args.host, port=args.port, latency=args.latency)

    def _terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # `docker stop` and process managers send SIGTERM; shells start background
    # jobs (`make run` recipes with `&`) with SIGINT ignored. Honour both.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server.start()
    print(f"{type(server).__name__} listening on {server.url}", flush=True)
    for name in ("base_url", "anthropic_base_url"):
        if hasattr(server, name):
            print(f"  {name} = {getattr(server, name)}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    serve_cli(FakeModelServer, default_port=8099)

"""Serve fake WhatsApp Cloud (Graph) API and AiSensy send endpoints on loopback.

:class:`FakeGraphServer` answers like Meta's ``POST /{version}/{phone_id}/messages``
(success and ``OAuthException`` error bodies) and like AiSensy's API-campaign
and direct session-message endpoints. It records every request and supports
the same fault scripting as :class:`vocoeng.testing.fake_ai.FakeModelServer`.

Run ``python -m vocoeng.testing.fake_graph --port 8098`` for a standalone server.
"""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from typing import Any, ClassVar

from vocoeng.testing.fake_ai import LoopbackServer, Reply, serve_cli

__all__ = ["FakeGraphServer"]

_GRAPH_PATH = re.compile(r"^/v\d+\.\d+/(?P<phone_id>[^/]+)/messages$")
AISENSY_CAMPAIGN_PATHS = frozenset({"/campaign/t1/api/v2", "/campaign/t1/api"})
AISENSY_DIRECT_PATH = "/direct-apis/t1/messages"

# Meta caps text bodies at 4096 characters; a sender that forgets to split
# long LLM replies should fail here exactly as in production.
MAX_TEXT_CHARS = 4096

# kind -> (HTTP status, Graph error code, title, details, error_subcode)
_GRAPH_FAULTS: dict[str, tuple[int, int, str, str, int | None]] = {
    "429": (
        429,
        130429,
        "Rate limit hit",
        "Cloud API message throughput has been reached.",
        None,
    ),
    "500": (
        500,
        131000,
        "Something went wrong",
        "Message failed to send due to an unknown error.",
        None,
    ),
    "503": (
        503,
        131016,
        "Service unavailable",
        "A service is temporarily unavailable.",
        None,
    ),
    "131047": (
        400,
        131047,
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since "
        "the customer last replied to this number.",
        None,
    ),
    "131056": (
        400,
        131056,
        "(Business Account, Consumer Account) pair rate limit hit",
        "Too many messages sent from the sender phone number to the same "
        "recipient phone number in a short period of time.",
        None,
    ),
    "190": (
        401,
        190,
        "Error validating access token: Session has expired.",
        "",
        463,
    ),
    "100": (400, 100, "Invalid parameter", "Invalid parameter.", None),
}


def _fbtrace_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(8)).decode().rstrip("=")


def _graph_error(
    status: int,
    code: int,
    message: str,
    *,
    details: str | None = None,
    subcode: int | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    error: dict[str, Any] = {
        "message": message,
        "type": "OAuthException",
        "code": code,
    }
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["fbtrace_id"] = _fbtrace_id()
    return Reply(status, {"error": error}, dict(headers or {}))


def _invalid_param(message: str) -> Reply:
    return _graph_error(400, 100, f"(#100) {message}", details=message)


def _bearer(headers: dict[str, str]) -> str:
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else ""


def _wa_id(to: str) -> str:
    return "".join(ch for ch in to if ch.isdigit())


def _template_params(template: dict[str, Any]) -> list[str]:
    params: list[str] = []
    for component in template.get("components") or []:
        for parameter in component.get("parameters") or []:
            if isinstance(parameter, dict) and "text" in parameter:
                params.append(str(parameter["text"]))
    return params


class FakeGraphServer(LoopbackServer):
    """Serve fake WhatsApp Cloud API and AiSensy send endpoints.

    Any bearer token is valid except a missing one and those in
    ``BAD_TOKENS``; pass ``valid_tokens`` to accept only specific ones.
    """

    FAULT_KINDS: ClassVar[frozenset[str]] = LoopbackServer.FAULT_KINDS | set(
        _GRAPH_FAULTS
    )
    BAD_TOKENS: ClassVar[frozenset[str]] = frozenset({"bad-token", "bad-key"})

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        valid_tokens: set[str] | frozenset[str] | None = None,
    ) -> None:
        super().__init__(host, port)
        #: Seconds slept before every successful answer.
        self.latency = latency
        self.valid_tokens = valid_tokens

    def __enter__(self) -> FakeGraphServer:
        self.start()
        return self

    @property
    def base_url(self) -> str:
        """Return the Graph API root to use instead of https://graph.facebook.com."""
        return self.url

    @property
    def aisensy_base_url(self) -> str:
        """Return the AiSensy root to use instead of https://backend.aisensy.com."""
        return self.url

    def messages_url(
        self, phone_number_id: str = "123456", version: str = "v21.0"
    ) -> str:
        """Return the Cloud API send URL for ``phone_number_id``."""
        return f"{self.url}/{version}/{phone_number_id}/messages"

    # -- scripting -----------------------------------------------------------

    def enqueue_fault(
        self,
        kind: str,
        count: int = 1,
        path: str | None = None,
        to: str | None = None,
        **opts: Any,
    ) -> None:
        """Fail the next ``count`` matching sends with ``kind``.

        Kinds: "429" (code 130429, ``retry_after`` seconds adds Retry-After),
        "500" (131000), "503" (131016), "131047" (outside the 24 h window),
        "131056" (pair rate limit), "190" (expired token), "100" (invalid
        parameter), "hang" (sleep ``seconds``, default 30, then answer) and
        "disconnect". ``to`` restricts the fault to one recipient; ``path``
        to one endpoint; ``message`` overrides the error text.
        """
        self._add_fault(kind, count, path, _wa_id(to) if to else None, opts)

    def always_fail(
        self,
        kind: str,
        to: str | None = None,
        path: str | None = None,
        **opts: Any,
    ) -> None:
        """Fail every matching send with ``kind`` until :meth:`clear_faults`."""
        self._add_fault(kind, None, path, _wa_id(to) if to else None, opts)

    # -- inspection ----------------------------------------------------------

    def sent_texts(self) -> list[tuple[str, str]]:
        """Return (to, body) for every accepted text message, oldest first."""
        sent = []
        for record in self.requests:
            body = record.body
            if (
                record.status == 200
                and self._is_session_send(record.path)
                and isinstance(body, dict)
                and body.get("type", "text") == "text"
            ):
                sent.append((str(body["to"]), str(body["text"]["body"])))
        return sent

    def sent_templates(self) -> list[tuple[str, str, list[str]]]:
        """Return (to, template or campaign name, params) for accepted templates."""
        sent = []
        for record in self.requests:
            body = record.body
            if record.status != 200 or not isinstance(body, dict):
                continue
            if self._is_session_send(record.path) and body.get("type") == "template":
                template = body["template"]
                sent.append(
                    (str(body["to"]), template["name"], _template_params(template))
                )
            elif record.path in AISENSY_CAMPAIGN_PATHS:
                params = [str(p) for p in body.get("templateParams") or []]
                sent.append((str(body["destination"]), body["campaignName"], params))
        return sent

    @staticmethod
    def _is_session_send(path: str) -> bool:
        return path == AISENSY_DIRECT_PATH or _GRAPH_PATH.match(path) is not None

    # -- request handling ----------------------------------------------------

    def respond(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> Reply:
        """Route a request to the Graph, AiSensy direct or campaign handler."""
        if method == "POST" and self._is_session_send(path):
            if path == AISENSY_DIRECT_PATH:
                token = _bearer(headers) or headers.get("x-aisensy-project-api-pwd", "")
            else:
                token = _bearer(headers)
            return self._session_send(path, token, body)
        if method == "POST" and path in AISENSY_CAMPAIGN_PATHS:
            return self._campaign(path, body)
        return _graph_error(
            400,
            100,
            f"Unsupported {method.lower()} request. Object with ID "
            f"'{path.strip('/')}' does not exist, cannot be loaded due to "
            "missing permissions, or does not support this operation.",
            subcode=33,
        )

    def fault_reply(self, kind: str, path: str, opts: dict[str, Any]) -> Reply:
        """Build the Meta- or AiSensy-shaped error reply for a fault."""
        status, code, title, details, subcode = _GRAPH_FAULTS[kind]
        headers = {}
        if "retry_after" in opts:
            headers["Retry-After"] = f"{float(opts['retry_after']):g}"
        message = opts.get("message") or title
        if path in AISENSY_CAMPAIGN_PATHS:
            # AiSensy's campaign API reports failures as {success: false}; the
            # exact wording of its messages is not documented.
            body = {"success": False, "message": message, "errorCode": code}
            return Reply(status, body, headers)
        return _graph_error(
            status,
            code,
            f"(#{code}) {message}" if code != 190 else message,
            details=details or None,
            subcode=subcode,
            headers=headers,
        )

    def _token_ok(self, token: str) -> bool:
        if not token or token in self.BAD_TOKENS:
            return False
        return self.valid_tokens is None or token in self.valid_tokens

    def _session_send(self, path: str, token: str, body: Any) -> Reply:
        if not self._token_ok(token):
            return _graph_error(
                401,
                190,
                "Invalid OAuth access token - Cannot parse access token",
            )
        to = body.get("to") if isinstance(body, dict) else None
        rule = self._take_fault(path, _wa_id(to) if isinstance(to, str) else None)
        if rule is not None:
            reply = self._apply_fault(rule, path)
            if reply is not None:
                return reply
        if not isinstance(body, dict):
            return _invalid_param("The request body must be a JSON object.")
        problem = _session_problem(body)
        if problem is not None:
            return _invalid_param(problem)
        self.sleep(self.latency)
        message: dict[str, Any] = {"id": "wamid." + _wamid_suffix(body["to"])}
        if body.get("type") == "template":
            message["message_status"] = "accepted"
        return Reply(
            200,
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": _wa_id(body["to"])}],
                "messages": [message],
            },
        )

    def _campaign(self, path: str, body: Any) -> Reply:
        if not isinstance(body, dict):
            return Reply(400, {"success": False, "message": "Invalid JSON body"})
        api_key = body.get("apiKey")
        if not isinstance(api_key, str) or not self._token_ok(api_key):
            return Reply(401, {"success": False, "message": "Invalid API Key"})
        destination = body.get("destination")
        rule = self._take_fault(
            path, _wa_id(destination) if isinstance(destination, str) else None
        )
        if rule is not None:
            reply = self._apply_fault(rule, path)
            if reply is not None:
                return reply
        for name in ("campaignName", "destination", "userName"):
            if not isinstance(body.get(name), str) or not body[name]:
                return Reply(400, {"success": False, "message": f"{name} is required"})
        params = body.get("templateParams", [])
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            return Reply(
                400,
                {"success": False, "message": "templateParams must be strings"},
            )
        self.sleep(self.latency)
        return Reply(
            200,
            {"success": "true", "submitted_message_id": str(uuid.uuid4())},
        )


def _wamid_suffix(to: str) -> str:
    # Real wamids are base64 of an opaque blob that embeds the recipient.
    raw = _wa_id(to).encode() + uuid.uuid4().bytes
    return "HBgL" + base64.b64encode(raw).decode().rstrip("=")


def _session_problem(body: dict[str, Any]) -> str | None:
    """Return Meta's "(#100)" detail for an invalid send body, or None."""
    if body.get("messaging_product") != "whatsapp":
        return "The parameter messaging_product is required."
    to = body.get("to")
    if not isinstance(to, str) or not _wa_id(to):
        return "The parameter to is required."
    kind = body.get("type", "text")
    if kind == "text":
        text = body.get("text")
        if not isinstance(text, dict) or not isinstance(text.get("body"), str):
            return "The parameter text['body'] is required."
        if not text["body"].strip():
            return "Param text['body'] must not be empty."
        if len(text["body"]) > MAX_TEXT_CHARS:
            return (
                f"Param text['body'] must be at most {MAX_TEXT_CHARS} characters long."
            )
        return None
    if kind == "template":
        template = body.get("template")
        if not isinstance(template, dict) or not isinstance(template.get("name"), str):
            return "The parameter template['name'] is required."
        language = template.get("language")
        if not isinstance(language, dict) or not isinstance(language.get("code"), str):
            return "The parameter template['language']['code'] is required."
        return None
    if not isinstance(kind, str) or not isinstance(body.get(kind), dict):
        return f"The parameter {kind} is required."
    return None


if __name__ == "__main__":
    serve_cli(FakeGraphServer, default_port=8098)

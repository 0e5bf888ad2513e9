"""Build Celery task messages for our Redis transport from a template.

A batch of messages of one shape (task, queue, the chain's remaining task
names, the header names) differ only in their ids, arguments and header
values. :class:`Template` sends one message of the shape through Celery's and
kombu's whole path with slots for those values, captures it before its LPUSH
(``kombu_redis.Channel.capturing``), and then makes each message of the shape
by filling the slots: ~5 µs a message against ~100 through kombu's producer.
``vocoeng.celery_batch.publish_many`` uses it and tests that the messages are
the ones ``apply_async`` sends.
"""

from __future__ import annotations

import base64
import re
import weakref
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import Any

from celery import signals
from kombu.utils.json import dumps as json_dumps

from . import correlation


def template_channel(producer: Any, *, sent_event: bool) -> Any:
    """Return ``producer``'s channel when it takes templated messages, else None.

    ``sent_event`` is ``app.conf.task_send_sent_event``, which the caller has
    read already (a lookup in Celery's settings costs ~20 µs).
    """
    from .kombu_redis import Channel

    channel = producer.channel
    if not isinstance(channel, Channel) or sent_event:
        return None
    # A publish hook could change each message differently. The correlation
    # id's own hook only sets the header from the current context, the same
    # for every message of the batch: a template keeps what it did.
    if any(
        r is not correlation._on_publish for r in _hooks(signals.before_task_publish)
    ):
        return None
    if _hooks(signals.after_task_publish):
        return None
    return channel


def _hooks(signal: Any) -> list[Any]:
    """Return the live receivers of ``signal``, for every sender."""
    found = []
    for _, receiver in signal.receivers:
        if isinstance(receiver, weakref.ReferenceType):
            receiver = receiver()
        if receiver is not None:
            found.append(receiver)
    return found


# A slot of a template: a JSON string standing for a value filled in later.
_SLOT = "\x00vocoeng-slot-{}\x00"
_SLOT_JSON = re.compile(r'"\\u0000vocoeng-slot-(\d+)\\u0000"')
# slot numbers; the chain's task ids follow, then the caller's header values
TASK_ID, ARGS, KWARGS, ARGSREPR, KWARGSREPR, BODY, TAG, ROOT_ID, PARENT_ID, REST = (
    range(10)
)

Split = tuple[list[str], list[int]]


def _split(text: str) -> Split | None:
    parts = _SLOT_JSON.split(text)
    literals, slots = parts[0::2], [int(n) for n in parts[1::2]]
    if any("vocoeng-slot-" in literal for literal in literals):
        return None  # a slot the encoder wrote otherwise: no template
    return literals, slots


def _render(split: Split, values: list[str]) -> str:
    literals, slots = split
    out = [literals[0]]
    for slot, literal in zip(slots, literals[1:], strict=True):
        out.append(values[slot])
        out.append(literal)
    return "".join(out)


def json_text(value: Any) -> str:
    """Return ``value`` as kombu's JSON encoder writes it (strings without it)."""
    if type(value) is str:
        return encode_basestring_ascii(value)
    if type(value) is dict and not value:
        return "{}"
    if type(value) in (tuple, list) and all(type(v) is str for v in value):
        return "[" + ", ".join(map(encode_basestring_ascii, value)) + "]"
    return json_dumps(value)


class Template:
    """The Redis payload of one message shape, with slots for what varies.

    Built by sending one message, whose varying values (task ids, arguments,
    their reprs, the caller's header values, the root and parent task ids of
    a message sent from inside a task) are slots, through the path the
    other messages take (``create_task_message``, ``send_task_message``,
    kombu's producer and channel), captured before its LPUSH
    (``kombu_redis.Channel.capturing``). A message of that shape is then the
    captured body and envelope with the slots filled by the JSON its values
    encode to (what the encoder writes in their place), the body
    base64-encoded as the channel does, and a delivery tag of the channel.
    """

    def __init__(self, key: str, body: Split, envelope: Split) -> None:
        self.key, self.body, self.envelope = key, body, envelope

    @classmethod
    def build(
        cls, send: Callable[..., None], channel: Any, rest: int, headers: int
    ) -> Template | None:
        """Return the template of what ``send`` publishes, or None if none fits."""
        slot = _SLOT.format
        chain_slots = list(range(REST, REST + rest))
        header_slots = list(range(REST + rest, REST + rest + headers))
        with channel.capturing() as captured:
            send(
                slot(TASK_ID),
                [slot(n) for n in chain_slots],
                slot(ARGS),
                slot(KWARGS),
                slot(ARGSREPR),
                slot(KWARGSREPR),
                [slot(n) for n in header_slots],
                slot(ROOT_ID),
                slot(PARENT_ID),
            )
        if len(captured) != 1:
            return None
        queue, message = captured[0]
        props = message["properties"]
        if (
            message.get("content-type") != "application/json"
            or props.get("body_encoding") != "base64"
            or "compression" in message["headers"]
            or (key := channel.queue_key(queue, message)) is None
        ):
            return None
        body = _split(base64.b64decode(message["body"]).decode("utf-8"))
        message["body"], props["delivery_tag"] = slot(BODY), slot(TAG)
        envelope = _split(json_dumps(message))
        if body is None or envelope is None:
            return None
        once = {BODY, TAG}
        wanted = {
            *(TASK_ID, ARGSREPR, KWARGSREPR, ROOT_ID, PARENT_ID),
            *once,
            *header_slots,
        }
        if (
            sorted(body[1]) != [ARGS, KWARGS, *chain_slots]
            or set(envelope[1]) != wanted
            or any(envelope[1].count(n) != 1 for n in once)
        ):
            return None
        return cls(key, body, envelope)

    def payload(self, values: list[str], tag: str) -> str:
        """Return the encoded message of ``values`` (by slot number)."""
        body = _render(self.body, values)
        values[BODY] = '"' + base64.b64encode(body.encode("utf-8")).decode() + '"'
        values[TAG] = '"' + tag + '"'
        return _render(self.envelope, values)

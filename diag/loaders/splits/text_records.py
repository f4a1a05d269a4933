"""The text of one record (a JSON Lines object or a row of a `datasets` table), whatever its
framing: plain `text`/`content`, a `prompt`/`completion` pair, or chat `messages`.

Records are compared on what a model reads, so two records with the same messages compare
equal whatever their key order, JSON whitespace, ids or extra metadata: only the roles and
the text of the contents make up the canonical string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# Field layouts that carry a sample's text, in order of preference.
CHAT = "messages"
PAIR = ("prompt", "completion")
TEXT_FIELDS = ("text", "content")


class RecordError(ValueError):
    """A record that does not have the text its layout promised (the caller names where)."""


def text_layout(fields: Sequence[str]) -> str | None:
    """Which layout a record with these fields uses: 'messages', 'prompt', 'text',
    'content', or None when it has no text field diag knows."""
    present = set(fields)
    if CHAT in present:
        return CHAT
    if all(f in present for f in PAIR):
        return PAIR[0]
    return next((f for f in TEXT_FIELDS if f in present), None)


def record_text(record: Mapping[str, object], layout: str) -> str:
    """The canonical text of `record` under `layout` (see `text_layout`)."""
    if layout == CHAT:
        return chat_text(record.get(CHAT))
    if layout == PAIR[0]:
        prompt, completion = (_plain(record.get(f), f) for f in PAIR)
        # Readable in a report, and what a model trained on the pair reads.
        return f"{prompt}\n{completion}"
    return _plain(record.get(layout), layout)


def chat_text(messages: object) -> str:
    if not isinstance(messages, list):
        raise RecordError(f"'messages' is {_kind(messages)}, not a list of messages")
    lines = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RecordError(f"message {i} is {_kind(message)}, not an object")
        role = message.get("role")
        lines.append(f"{role if isinstance(role, str) else ''}: {_content(message, i)}")
    return "\n".join(lines)


def _content(message: Mapping[str, object], i: int) -> str:
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise RecordError(f"message {i}: content is {_kind(content)}, not text or parts")
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
            parts.append(part["text"])
        # Non-text parts (images, audio) carry no text to compare: left out.
    return "\n".join(parts)


def _plain(value: object, field: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    raise RecordError(f"{field!r} is {_kind(value)}, not text")


def _kind(value: object) -> str:
    return "null" if value is None else f"a {type(value).__name__}"

"""A `.txt` or `.jsonl` batch, encoded by the model folder's tokenizer into a few sequences.

`.txt`: the whole text as one token stream, cut into sequences. `.jsonl`: one record a
line, each `{"text": ...}`, `{"prompt": ..., "completion": ...}` (the loss covers the
completion only, as in supervised fine-tuning) or `{"messages": [{"role", "content"}]}`
(the tokenizer's chat template when it has one); a record may carry an integer `label`
for a sequence classifier. The result is Hugging Face's layout: `input_ids` and
`attention_mask` as inputs, `labels` equal to the ids (-100 where no loss is taken).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diag.errors import InputError

if TYPE_CHECKING:
    import torch

TEXT_SUFFIXES = (".txt", ".jsonl")
MAX_SEQUENCES = 8  # a probe batch: enough to see samples mix, cheap to differentiate
MAX_TOKENS = 64
IGNORE = -100


@dataclass(frozen=True)
class _Record:
    ids: list[int]
    scored: list[bool]  # per token: does the loss predict it?
    label: int | None


def is_text_batch(path: str) -> bool:
    return Path(path).suffix.lower() in TEXT_SUFFIXES


def read_text_batch(
    path_text: str, tokenizer: Any, max_tokens: int | None, notes: list[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """(inputs, labels or class labels) of a text batch; what was read goes to `notes`."""
    path = Path(path_text)
    if not path.is_file():
        raise InputError(path_text, "no such batch file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path_text, f"not readable UTF-8 text ({exc})") from None
    limit = min(MAX_TOKENS, max_tokens or MAX_TOKENS)
    if path.suffix.lower() == ".txt":
        records, kind = _stream(tokenizer, text, limit), "plain text"
    else:
        records, kind = _records(tokenizer, text, limit, path_text)
    records = [r for r in records if len(r.ids) >= 2]
    if not records:
        raise InputError(path_text, "no text of at least two tokens")
    longest = max(len(r.ids) for r in records)
    notes.append(
        f"{path_text}: {len(records)} sequences of up to {longest} tokens ({kind}), encoded "
        f"with the model folder's tokenizer (at most {MAX_SEQUENCES} x {limit})"
    )
    return _tensors(records, _pad_id(tokenizer), path_text)


def _stream(tokenizer: Any, text: str, limit: int) -> list[_Record]:
    ids = tokenizer(text)["input_ids"]
    rows = [ids[i : i + limit] for i in range(0, len(ids), limit)][:MAX_SEQUENCES]
    return [_Record(row, [True] * len(row), None) for row in rows]


def _records(tokenizer: Any, text: str, limit: int, path: str) -> tuple[list[_Record], str]:
    records, kinds = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise InputError(path, f"line {number}: not JSON ({exc})") from None
        if not isinstance(record, dict):
            raise InputError(path, f"line {number}: a JSON {type(record).__name__}, not an object")
        kind, ids, scored = _encode(tokenizer, record, number, path)
        label = record.get("label")
        if label is not None and (not isinstance(label, int) or isinstance(label, bool)):
            raise InputError(path, f"line {number}: 'label' must be an integer class")
        kinds.add(kind)
        records.append(_Record(ids[:limit], scored[:limit], label))
        if len(records) == MAX_SEQUENCES:
            break
    labelled = {r.label is not None for r in records}
    if len(labelled) > 1:
        raise InputError(path, "some records have a 'label' and some do not")
    return records, " and ".join(sorted(kinds)) or "no records"


def _encode(
    tokenizer: Any, record: dict, number: int, path: str
) -> tuple[str, list[int], list[bool]]:
    if isinstance(record.get("text"), str):
        ids = tokenizer(record["text"])["input_ids"]
        return "text", ids, [True] * len(ids)
    if isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        prompt = tokenizer(record["prompt"])["input_ids"]
        completion = tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
        return (
            "prompt+completion",
            prompt + completion,
            [False] * len(prompt) + [True] * len(completion),
        )
    if isinstance(record.get("messages"), list):
        ids = _chat(tokenizer, record["messages"], number, path)
        return "chat messages", ids, [True] * len(ids)
    raise InputError(
        path, f"line {number}: expected a 'text', 'prompt' and 'completion', or 'messages'"
    )


def _chat(tokenizer: Any, messages: list, number: int, path: str) -> list[int]:
    valid = all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    )
    if not valid or not messages:
        raise InputError(path, f"line {number}: messages must be {{'role', 'content'}} strings")
    if getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
        return list(encoded["input_ids"])
    # No template: a plain transcript still exercises the model on the conversation's tokens.
    transcript = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return tokenizer(transcript)["input_ids"]


def _pad_id(tokenizer: Any) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(value, int):
            return value
    return 0  # masked out by attention_mask and labels, so any valid id does


def _tensors(
    records: list[_Record], pad: int, path: str
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    import torch

    width = max(len(r.ids) for r in records)
    ids = torch.full((len(records), width), pad, dtype=torch.long)
    mask = torch.zeros((len(records), width), dtype=torch.long)
    labels = torch.full((len(records), width), IGNORE, dtype=torch.long)
    for row, record in enumerate(records):
        n = len(record.ids)
        ids[row, :n] = torch.tensor(record.ids, dtype=torch.long)
        mask[row, :n] = 1
        scored = torch.tensor(record.scored, dtype=torch.bool)
        labels[row, :n] = torch.where(scored, ids[row, :n], IGNORE)
    inputs = {"input_ids": ids, "attention_mask": mask}
    if records[0].label is not None:
        return inputs, torch.tensor([r.label for r in records], dtype=torch.long)
    return inputs, labels

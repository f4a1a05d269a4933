"""A tiny causal language model built offline: stdlib docstrings, a BPE trained on them, a GPT-2.

Nothing is downloaded: the text ships with Python, the tokenizer is trained here in seconds, and the
model is built from a config, so the tests that use it run anywhere the venv runs.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    import transformers

EOS = "<|endoftext|>"
PAD = "<pad>"

# A fixed list (not sys.modules, which depends on what was imported before) keeps the corpus the
# same in every process; these modules are pure Python and well documented on every platform.
_MODULES = (
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email.message",
    "enum", "fractions", "ftplib", "functools", "gettext", "glob", "gzip", "heapq", "hmac",
    "html.parser", "http.client", "imaplib", "inspect", "ipaddress", "json", "logging", "mailbox",
    "numbers", "optparse", "os", "pathlib", "pickle", "pprint", "queue", "random", "shlex",
    "shutil", "smtplib", "socketserver", "statistics", "string", "subprocess", "tarfile",
    "tempfile", "textwrap", "threading", "tokenize", "traceback", "typing", "unittest",
    "urllib.parse", "uuid", "warnings", "zipfile",
)  # fmt: skip


def _clean(doc: object) -> str | None:
    if not isinstance(doc, str):
        return None
    text = inspect.cleandoc(doc).strip()
    return text if len(text) >= 40 else None  # one-liners like "Return self." teach nothing


def _module_docstrings(module: Any) -> list[str]:
    found = [module.__doc__]
    for name in sorted(vars(module)):
        member = getattr(module, name, None)
        if getattr(member, "__module__", None) != module.__name__:
            continue  # re-exports would repeat another module's text
        found.append(getattr(member, "__doc__", None))
        if inspect.isclass(member):
            for attr in sorted(vars(member)):
                found.append(getattr(vars(member)[attr], "__doc__", None))
    return [text for text in map(_clean, found) if text]


def docstring_texts(max_chars: int = 400_000) -> list[str]:
    """Docstrings of standard-library modules, classes and functions, one document each."""
    texts: list[str] = []
    seen: set[str] = set()
    total = 0
    for module_name in _MODULES:
        for text in _module_docstrings(importlib.import_module(module_name)):
            if text in seen:
                continue
            seen.add(text)
            texts.append(text)
            total += len(text)
            if total >= max_chars:
                return texts
    return texts


def build_tokenizer(out_dir: Path, vocab_size: int = 512) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE trained on the docstrings, saved to out_dir as a Hugging Face tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(docstring_texts(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS, pad_token=PAD)
    tokenizer.bos_token = EOS
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def tiny_gpt2_config(vocab_size: int, **overrides: Any) -> transformers.GPT2Config:
    """Two layers, two heads, 64 wide: trains a useful amount in ~20 s on two cores."""
    from transformers import GPT2Config

    settings: dict[str, Any] = dict(
        vocab_size=vocab_size,
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    settings.update(overrides)
    return GPT2Config(**settings)


def lm_batches(
    tokenizer: transformers.PreTrainedTokenizerBase, texts: list[str], block: int = 64
) -> torch.Tensor:
    """All texts encoded, joined by eos, cut into (N, block) rows; the ragged tail is dropped."""
    import torch

    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer.encode(text, add_special_tokens=False))
        ids.append(tokenizer.eos_token_id)
    rows = len(ids) // block
    return torch.tensor(ids[: rows * block], dtype=torch.long).view(rows, block)

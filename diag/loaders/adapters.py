"""PEFT adapter folders: `adapter_config.json` read as plain JSON into an `AdapterConfig`.

PEFT saves a LoRA fine-tune as `adapter_model.safetensors` (only the adapter's tensors)
next to `adapter_config.json`, which says how to apply them: the rank `r`, the scale
`lora_alpha` (the update is `B @ A * lora_alpha / r`, or `/ sqrt(r)` with rsLoRA), the
modules adapted and the base model. Nothing here imports peft: the file is JSON, and the
fields diag needs have kept their names since peft's first releases.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diag.errors import InputError

CONFIG_NAME = "adapter_config.json"
# A real adapter_config.json is a few kilobytes; anything this big is not one.
MAX_CONFIG_BYTES = 1024 * 1024
LORA_TYPES = ("LORA", "ADALORA")


@dataclass(frozen=True)
class AdapterConfig:
    """What an adapter's config says about how its tensors are applied."""

    path: str
    peft_type: str
    r: int
    lora_alpha: float
    target_modules: tuple[str, ...]
    base_model: str | None = None
    use_rslora: bool = False
    use_dora: bool = False
    fan_in_fan_out: bool = False
    init_lora_weights: bool | str = True

    @property
    def scale(self) -> float:
        """The factor PEFT multiplies `B @ A` by."""
        if self.r <= 0:
            return 0.0
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    @property
    def is_lora(self) -> bool:
        return self.peft_type in LORA_TYPES


def read_adapter_config(folder: Path) -> AdapterConfig | None:
    """The folder's `adapter_config.json`, or None when it has none.

    Raises InputError when the file exists but is not a readable adapter config.
    """
    path = Path(folder) / CONFIG_NAME
    if not path.is_file() or path.is_symlink():
        return None  # a link is never followed: it could lead out of the folder
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise InputError(path, f"{size:,} bytes is too large for an adapter config")
        doc = json.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputError(path, "not valid JSON") from None
    if not isinstance(doc, dict):
        raise InputError(path, "not a JSON object")
    return parse_adapter_config(doc, path)


def parse_adapter_config(doc: Mapping[str, Any], path: str | Path) -> AdapterConfig:
    """An adapter config from its JSON object; InputError names `path` if it is malformed."""
    peft_type = doc.get("peft_type", "LORA")
    if not isinstance(peft_type, str):
        raise InputError(path, "peft_type is not a string")
    r = doc.get("r", 8)  # peft's default rank
    alpha = doc.get("lora_alpha", 8)
    if not _whole(r) or r <= 0:
        raise InputError(path, f"r must be a positive integer, not {r!r}")
    if not _number(alpha):
        raise InputError(path, f"lora_alpha must be a finite number, not {alpha!r}")
    base = doc.get("base_model_name_or_path")
    init = doc.get("init_lora_weights", True)
    return AdapterConfig(
        path=str(path),
        peft_type=peft_type.upper(),
        r=int(r),
        lora_alpha=float(alpha),
        target_modules=_modules(path, doc.get("target_modules")),
        base_model=base if isinstance(base, str) and base else None,
        use_rslora=doc.get("use_rslora") is True,
        use_dora=doc.get("use_dora") is True,
        fan_in_fan_out=doc.get("fan_in_fan_out") is True,
        init_lora_weights=init if isinstance(init, bool | str) else True,
    )


def _modules(path: str | Path, value: object) -> tuple[str, ...]:
    # peft accepts a list of names or one regular expression as a string.
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InputError(path, "target_modules must be a string or a list of strings")


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value < 2**31


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# peft names a LoRA factor `<module>.lora_A[.<adapter>].weight` (`lora_embedding_A` for an
# embedding); adapter files drop the adapter name, live state dicts keep it.
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?:embedding_)?(?P<part>[AB])(?:\.(?P<adapter>[^.]+))?$")
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraName:
    """What a tensor name says about its place in a LoRA adapter."""

    module: str  # the adapted module, without peft's `base_model.model.` prefix
    part: str  # "A" or "B"
    adapter: str | None  # the adapter's name when the file keeps it ("default")
    prefix: str  # the module as named in the file, for finding its base weight


def lora_name(name: str) -> LoraName | None:
    """The LoRA factor a tensor is, from peft's naming; None for any other tensor."""
    match = _LORA.match(name.removesuffix(".weight"))
    if match is None:
        return None
    module = match["module"]
    # A wrapper may nest the peft model further (Lightning's `model.base_model.model...`).
    shown = module.split(PEFT_PREFIX, 1)[-1]
    return LoraName(shown, match["part"], match["adapter"], module)

"""`--model hf:DIR`: a Hugging Face model folder, built from its config offline, never its code.

The architecture comes from `config.json` through transformers' own classes: a config that
asks for custom code (`auto_map`) is refused, nothing is downloaded, and the weights are
read by diag's checkpoint loaders (never `torch.load` of a pickle). A Trainer
`checkpoint-N` folder is such a folder too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diag.errors import InputError, UsageError

if TYPE_CHECKING:
    import torch

    from diag.loaders.checkpoint import Checkpoint

WEIGHT_FILES = (
    "model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)  # fmt: skip
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclass
class HfModel:
    """The model built from the folder's config; `causal` when it predicts the next token."""

    folder: Path
    model: torch.nn.Module
    causal: bool
    architecture: str


def open_hf_model(spec: str) -> HfModel:
    """The architecture of `hf:DIR`, randomly initialised (seed 0); the weights come later."""
    folder = Path(spec.removeprefix("hf:"))
    if not (folder / "config.json").is_file():
        raise InputError(folder, "no config.json: --model hf:DIR needs a Hugging Face model folder")
    _refuse_custom_code(folder / "config.json")
    # Set before transformers is imported: it reads the variable once.
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:  # an unknown model_type, a malformed field: one line
        raise InputError(folder / "config.json", _short(exc)) from None
    config.use_cache = False  # the probe never generates; a cache only costs memory
    model_class = _model_class(config, transformers, folder)
    torch.manual_seed(0)
    try:
        model = model_class(config)
    except Exception as exc:
        raise InputError(folder / "config.json", f"building the model: {_short(exc)}") from None
    causal = type(model).__name__ in _causal_classes()
    return HfModel(folder, model, causal, type(model).__name__)


def _refuse_custom_code(path: Path) -> None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(path, f"not readable JSON ({_short(exc)})") from None
    if not isinstance(data, dict):
        raise InputError(path, "not a JSON object")
    if "auto_map" in data:
        raise InputError(
            path, "asks for custom model code (auto_map); diag never runs a folder's own code"
        )


def _model_class(config: Any, transformers: Any, folder: Path) -> Any:
    """The class the config names (e.g. ...ForSequenceClassification), else a causal LM."""
    for name in getattr(config, "architectures", None) or ():
        found = getattr(transformers, str(name), None)
        if isinstance(found, type) and issubclass(found, transformers.PreTrainedModel):
            return found
    mapping = transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    name = mapping.get(config.model_type)
    if name is None or getattr(transformers, name, None) is None:
        raise InputError(
            folder / "config.json", f"no causal-LM class for model_type {config.model_type!r}"
        )
    return getattr(transformers, name)


def _causal_classes() -> set[str]:
    from transformers.models.auto import modeling_auto

    return set(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def weights_file(folder: Path) -> Path:
    """The folder's weights, in the order transformers itself prefers them."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise InputError(folder, f"holds no weights ({', '.join(WEIGHT_FILES)})")


def read_hf_state(
    model: torch.nn.Module, checkpoint: Checkpoint, notes: list[str]
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the model's names, as transformers would match them.

    Tied copies (lm_head = wte) may be absent, buffers older versions saved are skipped,
    and a base-model file (`h.0...`) fits the model with a head (`transformer.h.0...`).
    """
    from diag.loaders.probe_inputs import read_state

    ignore = getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()
    prefix = getattr(model, "base_model_prefix", "") or ""
    return read_state(
        checkpoint,
        model,
        notes,
        optional=_tied_names(model),
        ignore=tuple(ignore),
        base_prefix=prefix,
    )


def load_weights(hf: HfModel, checkpoint: Checkpoint, notes: list[str]) -> None:
    hf.model.load_state_dict(read_hf_state(hf.model, checkpoint, notes), strict=False)
    hf.model.tie_weights()  # the copies a file saves once point at their source again


def _tied_names(model: torch.nn.Module) -> set[str]:
    """State-dict names sharing storage with an earlier one: saved once, as the first."""
    seen: set[int] = set()
    tied = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = tensor.data_ptr()
        if key in seen and tensor.numel():
            tied.add(name)
        seen.add(key)
    return tied


def load_tokenizer(folder: Path) -> Any:
    """The folder's tokenizer, offline; None when the folder has none."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    if (folder / "tokenizer_config.json").is_file():
        _refuse_custom_code(folder / "tokenizer_config.json")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:
        raise InputError(folder, f"cannot load its tokenizer: {_short(exc)}") from None


def max_positions(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def require_tokenizer(tokenizer: Any, folder: Path, batch: str) -> Any:
    if tokenizer is None:
        raise UsageError(
            f"--batch {batch}: a text batch needs a tokenizer, and {folder} has none "
            "(save it with tokenizer.save_pretrained, or pass a .pt batch of token ids)"
        )
    return tokenizer


def _short(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."

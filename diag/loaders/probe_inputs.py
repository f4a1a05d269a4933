"""`--model`, `--batch`, `--loss`: build the user's module, load weights, read a batch -> `Probe`.

The model file is the user's own code and is imported (that is the point of `--model`);
everything else (checkpoint, init, batch) is data and is only ever read through diag's
restricted unpickler, so a hostile batch file cannot run code.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from diag.errors import InputError, UsageError
from diag.loaders.safe_pickle import Opaque, TensorRef
from diag.probe import LossFn, Probe, main_output

if TYPE_CHECKING:
    import torch

    from diag.loaders.checkpoint import Checkpoint

INPUT_KEYS = ("inputs", "input", "x", "data")
TARGET_KEYS = ("targets", "target", "y", "labels")
# Wrappers that nest a model's state dict one level down: Lightning's LightningModule
# (`self.model`), DataParallel/DDP (`module.`), torch.compile (`_orig_mod.`).
WRAPPER_PREFIXES = ("model.", "module.", "_orig_mod.")
BUILTIN_LOSSES = ("cross_entropy", "mse", "bce")
MAX_LISTED = 5
IGNORE_INDEX = -100  # torch's and Hugging Face's "no loss at this position"


def open_probe(
    model_spec: str,
    batch_path: str,
    *,
    loss_spec: str | None = None,
    checkpoint: Checkpoint | None = None,
    init: Checkpoint | None = None,
) -> Probe:
    """The user's model (with the checkpoint's weights), a batch and a loss, checked to run."""
    import torch

    notes: list[str] = []
    hf = model_spec.startswith("hf:")
    if hf:
        model, inputs, targets, causal = _open_hf(model_spec, batch_path, checkpoint, notes)
        model_format = "hugging face config"
    else:
        if Path(batch_path).suffix.lower() in (".txt", ".jsonl"):
            raise UsageError(
                f"--batch {batch_path}: a text batch needs a tokenizer: use --model hf:DIR "
                "(a folder with config.json and tokenizer files), or save token ids with torch.save"
            )
        model, causal, model_format = build_model(model_spec), None, "python factory"
        if checkpoint is not None:
            _load(model, checkpoint, model_spec, notes)
        inputs, targets = read_batch(batch_path)
    initial = None
    if init is not None:
        initial = {k: _as_float32(v) for k, v in _initial(model, init, hf, notes).items()}
    model = model.float().eval()
    inputs = _cast_inputs(inputs)
    if targets is not None and targets.is_floating_point():
        targets = targets.float()
    output = _first_output(model, inputs, model_spec, batch_path)
    targets, language = language_targets(inputs, targets, main_output(output), causal)
    loss_fn, loss_name = choose_loss(loss_spec, targets, language, output)
    probe = Probe(
        model=model,
        inputs=inputs,
        targets=targets,
        loss_fn=loss_fn,
        loss_name=loss_name,
        source=model_spec,
        batch_path=str(batch_path),
        initial=initial,
        notes=notes,
        causal=bool(causal) or language is not None,
        model_format=model_format,
    )
    _check_loss(probe, output, torch)
    return probe


def _initial(
    model: torch.nn.Module, init: Checkpoint, hf: bool, notes: list[str]
) -> dict[str, torch.Tensor]:
    """The `--init` weights; a Hugging Face model's may leave out its tied copies."""
    if not hf:
        return read_state(init, model, notes)
    from diag.loaders.hf_model import read_hf_state

    state = read_hf_state(model, init, notes)
    full = model.state_dict()
    for name in full.keys() - state.keys():  # a tied copy: the tensor it shares
        shared = [k for k, v in full.items() if v.data_ptr() == full[name].data_ptr()]
        source = next((k for k in shared if k in state), None)
        if source is not None:
            state[name] = state[source]
    return state


def _load(model: torch.nn.Module, checkpoint: Checkpoint, spec: str, notes: list[str]) -> None:
    state = read_state(checkpoint, model, notes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # what read_state's checks cannot see (custom loaders)
        cause = _one_line(exc, lines=3)
        raise InputError(checkpoint.path, f"does not fit {spec}: {cause}") from None


def _open_hf(
    spec: str, batch_path: str, checkpoint: Checkpoint | None, notes: list[str]
) -> tuple[torch.nn.Module, Any, torch.Tensor | None, bool]:
    """`hf:DIR`: the model from its config, its weights, and the batch (text or tensors)."""
    from diag.loaders import hf_model, text_batch
    from diag.loaders.checkpoint import open_checkpoint

    hf = hf_model.open_hf_model(spec)
    if checkpoint is None:
        checkpoint = open_checkpoint(hf_model.weights_file(hf.folder))
    hf_model.load_weights(hf, checkpoint, notes)
    notes.append(f"{spec}: {hf.architecture} from config.json, weights from {checkpoint.path}")
    if text_batch.is_text_batch(batch_path):
        tokenizer = hf_model.require_tokenizer(
            hf_model.load_tokenizer(hf.folder), hf.folder, batch_path
        )
        limit = hf_model.max_positions(hf.model)
        inputs, targets = text_batch.read_text_batch(batch_path, tokenizer, limit, notes)
        if not hf.causal and targets is not None and targets.ndim > 1:
            # token labels mean nothing to a classifier: only the loss-free rules run
            notes.append(f"{batch_path}: no 'label' per record, so {hf.architecture} has no loss")
            targets = None
        return hf.model, inputs, targets, hf.causal
    inputs, targets = read_batch(batch_path)
    return hf.model, inputs, targets, hf.causal


# ------------------------------------------------------------------ the model


def split_spec(spec: str, flag: str) -> tuple[str, str]:
    """(file or module, function) of `FILE.py:FUNC` / `MODULE:FUNC`."""
    # rpartition: a Windows path has a colon after its drive letter.
    where, sep, func = spec.rpartition(":")
    if not sep or not where or not func.isidentifier():
        raise UsageError(f"{flag} {spec!r}: expected FILE.py:FUNC or MODULE:FUNC")
    return where, func


def import_target(spec: str, flag: str) -> tuple[Any, Path | None]:
    """The object `FUNC` of a spec, and the file's folder when the spec names a file."""
    where, func = split_spec(spec, flag)
    folder = None
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if not path.is_file():
            raise InputError(where, f"no such file (from {flag} {spec})")
        module = _import_file(path, spec)
        folder = path.resolve().parent
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:  # the user's package failing to import: one line, no traceback
            raise InputError(spec, f"cannot import {where}: {_describe(exc)}") from None
    target = getattr(module, func, None)
    if target is None:
        raise InputError(spec, f"{where} defines no {func!r}")
    if not callable(target):
        raise InputError(spec, f"{func!r} in {where} is a {type(target).__name__}, not callable")
    return target, folder


def _import_file(path: Path, spec: str) -> ModuleType:
    # A private name per file: importing the same file twice reuses it, and it can never
    # shadow a real module the user (or diag) imports by name.
    digest = hashlib.sha1(str(path.resolve()).encode(), usedforsecurity=False).hexdigest()[:12]
    name = f"_diag_user_{path.stem.replace('-', '_')}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise InputError(path, f"cannot import it as Python (from --model {spec})")
    module = importlib.util.module_from_spec(loader_spec)
    # Registered before running: dataclasses and pickling look their module up by name.
    sys.modules[name] = module
    try:
        with _on_path(path.resolve().parent):
            loader_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a script that calls exit() at import, too
        del sys.modules[name]
        raise InputError(path, f"importing it raised {_describe(exc)}") from None
    return module


@contextlib.contextmanager
def _on_path(folder: Path | None) -> Iterator[None]:
    """The model file's folder on sys.path, so it can import its sibling modules."""
    if folder is None or str(folder) in sys.path:
        yield
        return
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(folder))


def build_model(spec: str) -> torch.nn.Module:
    """Call the factory of `--model` with no arguments; it must return an nn.Module."""
    import torch

    factory, folder = import_target(spec, "--model")
    # The same random init every time, so a probe without a checkpoint is reproducible.
    torch.manual_seed(0)
    try:
        with _on_path(folder):
            model = factory()
    except (Exception, SystemExit) as exc:
        raise InputError(spec, f"the factory raised {_describe(exc)}") from None
    if not isinstance(model, torch.nn.Module):
        raise InputError(
            spec, f"the factory returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


# ------------------------------------------------------------------ weights


def read_state(
    checkpoint: Checkpoint,
    model: torch.nn.Module,
    notes: list[str],
    *,
    optional: set[str] | frozenset[str] = frozenset(),
    ignore: tuple[str, ...] = (),
    base_prefix: str = "",
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the model's names, checked against it before reading.

    `optional` model names may be absent (a tied copy saved once), checkpoint names the
    model does not have are skipped when they match an `ignore` pattern (buffers older
    versions saved), and a checkpoint of the base model (Hugging Face saves `h.0...` for
    `transformer.h.0...`) gets `base_prefix` put in front.
    """
    import re

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    infos = {i.name: i for i in checkpoint.infos()}
    mapping, ignored = match_names(list(infos), set(expected))
    if base_prefix and not set(mapping.values()) & set(expected):
        mapping = {n: f"{base_prefix}.{k}" for n, k in mapping.items()}
    for name, key in list(mapping.items()):
        if key not in expected and any(re.search(p, key) for p in ignore):
            ignored.append(mapping.pop(name))
    held = set(mapping.values())
    missing = [k for k in expected if k not in held and k not in optional]
    unexpected = [name for name, key in mapping.items() if key not in expected]
    wrong = [
        f"{key} {list(infos[name].shape)} in the file, {list(expected[key])} in the model"
        for name, key in mapping.items()
        if key in expected and tuple(infos[name].shape) != expected[key]
    ]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
            if keys:
                more = f" (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
                parts.append(f"{label}: {', '.join(keys[:MAX_LISTED])}{more}")
        raise InputError(checkpoint.path, f"does not fit the model: {'; '.join(parts)}")
    if ignored:
        notes.append(
            f"{checkpoint.path}: {len(ignored)} tensors outside the model were not loaded "
            f"(e.g. {ignored[0]})"
        )
    return {key: checkpoint.table.read(name) for name, key in mapping.items()}


def match_names(names: list[str], wanted: set[str]) -> tuple[dict[str, str], list[str]]:
    """checkpoint name -> model name, and names left out, stripping wrapper prefixes if needed.

    Keys are stripped only when that makes them fit: a prefix every key shares (DDP's
    `module.`), or one whose keys are exactly the model while the rest belongs to something
    else in the same LightningModule (a loss with weights, an EMA copy): those are left out.
    """
    current = {n: n for n in names}
    for _ in range(3):  # nested wrappers: Lightning around DDP around torch.compile
        if set(current.values()) == wanted:
            break
        for prefix in WRAPPER_PREFIXES:
            inside = {n: k[len(prefix) :] for n, k in current.items() if k.startswith(prefix)}
            if inside and (len(inside) == len(current) or set(inside.values()) == wanted):
                current = inside
                break
        else:
            break
    return current, [n for n in names if n not in current]


def _as_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor


# ------------------------------------------------------------------ the batch


def read_batch(
    path_text: str,
) -> tuple[tuple[torch.Tensor, ...] | dict[str, torch.Tensor], torch.Tensor | None]:
    """(inputs, targets) of a tensors-only `torch.save` file, read without running its pickle.

    Both torch layouts are read: the zip format and the legacy (pre-1.6) one.
    """
    from diag.loaders.checkpoint import sniff
    from diag.loaders.legacy_torch import LegacyTorch
    from diag.loaders.torchzip import TorchZip

    path = Path(path_text)
    if not path.is_file():
        raise InputError(path_text, "no such batch file")
    try:
        kind = sniff(path)
    except OSError as exc:
        raise InputError(path_text, f"cannot read ({exc.strerror})") from None
    if kind not in ("torch", "torch-legacy"):
        raise InputError(path_text, f"not a torch.save file ({kind} content)")
    archive = TorchZip(path) if kind == "torch" else LegacyTorch(path)
    try:
        inputs, targets = _layout(archive.root, path_text)
        if isinstance(inputs, dict):
            loaded: tuple | dict = {k: archive.read(v, k) for k, v in inputs.items()}
        else:
            loaded = tuple(archive.read(v, f"inputs[{i}]") for i, v in enumerate(inputs))
        target = None if targets is None else archive.read(targets, "targets")
    finally:
        archive.close()
    _check_batch_dims(loaded, target, path_text)
    return loaded, target


def _layout(root: Any, path: str) -> tuple[tuple[TensorRef, ...] | dict[str, TensorRef], Any]:
    """Which tensors are inputs and which are targets, from the file's structure."""
    if isinstance(root, TensorRef):
        return (root,), None
    if isinstance(root, list | tuple) and not isinstance(root, Opaque):
        if len(root) not in (1, 2):
            raise InputError(
                path, f"a batch sequence of {len(root)} items; expected (inputs, targets)"
            )
        targets = _tensor(root[1], "targets", path) if len(root) == 2 else None
        return _inputs(root[0], path), targets
    if isinstance(root, Mapping) and not isinstance(root, Opaque):
        if not all(isinstance(k, str) for k in root):
            raise InputError(path, "batch dict keys must be strings")
        target_keys = [k for k in root if k in TARGET_KEYS]
        if len(target_keys) > 1:
            raise InputError(path, f"several target keys ({', '.join(target_keys)}); keep one")
        targets = _tensor(root[target_keys[0]], target_keys[0], path) if target_keys else None
        rest = {k: v for k, v in root.items() if k not in TARGET_KEYS}
        if not rest:
            raise InputError(path, "the batch has no inputs (only targets)")
        if len(rest) == 1 and next(iter(rest)) in INPUT_KEYS:
            return _inputs(next(iter(rest.values())), path), targets
        # Named inputs: every other key is a keyword argument of forward().
        return {k: _tensor(v, k, path) for k, v in rest.items()}, targets
    raise InputError(path, f"the batch is {_what(root)}; expected tensors (dict, tuple or tensor)")


def _inputs(value: Any, path: str) -> tuple[TensorRef, ...] | dict[str, TensorRef]:
    if isinstance(value, list | tuple) and not isinstance(value, Opaque):
        if not value:
            raise InputError(path, "the batch's inputs are an empty sequence")
        return tuple(_tensor(v, f"inputs[{i}]", path) for i, v in enumerate(value))
    if isinstance(value, Mapping) and not isinstance(value, Opaque):
        if not value or not all(isinstance(k, str) for k in value):
            raise InputError(path, "the batch's inputs dict must map names to tensors")
        return {k: _tensor(v, k, path) for k, v in value.items()}
    return (_tensor(value, "inputs", path),)


def _tensor(value: Any, name: str, path: str) -> TensorRef:
    if not isinstance(value, TensorRef):
        raise InputError(path, f"{name!r} is {_what(value)}, not a tensor")
    return value


def _what(value: Any) -> str:
    if isinstance(value, Opaque):
        return f"an object of class {value.global_name}"
    return f"a {type(value).__name__}"


def _check_batch_dims(inputs: Any, targets: torch.Tensor | None, path: str) -> None:
    named = inputs.items() if isinstance(inputs, dict) else enumerate(inputs)
    sizes = {f"inputs[{k}]" if isinstance(k, int) else k: t for k, t in named}
    if targets is not None:
        sizes["targets"] = targets
    scalar = [k for k, t in sizes.items() if t.dim() == 0]
    if scalar:
        raise InputError(path, f"{scalar[0]} is a scalar; a batch needs a first (batch) dimension")
    firsts = {k: int(t.shape[0]) for k, t in sizes.items()}
    if len(set(firsts.values())) > 1:
        shown = ", ".join(f"{k}: {n}" for k, n in firsts.items())
        raise InputError(path, f"batch sizes differ ({shown})")


def _cast_inputs(inputs: Any) -> Any:
    # The model runs in float32, so floating inputs follow (a float64 batch from numpy would
    # otherwise fail with a dtype error that says nothing about the batch).
    if isinstance(inputs, dict):
        return {k: _as_float32(v) for k, v in inputs.items()}
    return tuple(_as_float32(t) for t in inputs)


# ------------------------------------------------------------------ the loss


def choose_loss(
    spec: str | None,
    targets: torch.Tensor | None,
    language: str | None = None,
    output: Any = None,
) -> tuple[LossFn | None, str]:
    """The loss and why it was chosen: `--loss`, else from the targets' dtype.

    `language` says how next-token targets were made from the inputs ("next token"), and
    `output` is the model's output on the batch: a ModelOutput or per-token logits need
    the cross-entropy that reads `logits` and flattens the positions.
    """
    import torch
    import torch.nn.functional as F

    if targets is None:
        if spec is not None:
            raise UsageError(f"--loss {spec}: the batch has no targets to compute a loss on")
        return None, "none (the batch has no targets)"
    plain = isinstance(output, torch.Tensor) or output is None
    if spec is None:
        if language is not None:
            return token_cross_entropy, f"cross_entropy ({language})"
        if targets.is_floating_point():
            return _mse, "mse (floating-point targets)"
        if targets.dtype.is_complex:
            raise UsageError("complex targets: pass --loss MODULE:FUNC")
        if targets.dtype == torch.bool:
            return _bce, "bce (boolean targets)"
        if plain and not _per_token(output, targets):
            return F.cross_entropy, "cross_entropy (integer targets)"
        return token_cross_entropy, "cross_entropy (integer targets)"
    if spec == "cross_entropy":
        return (F.cross_entropy if plain else token_cross_entropy), "cross_entropy (--loss)"
    if spec == "mse":
        return _mse, "mse (--loss)"
    if spec == "bce":
        return _bce, "bce (--loss)"
    if ":" not in spec:
        raise UsageError(f"--loss {spec!r}: expected {', '.join(BUILTIN_LOSSES)} or MODULE:FUNC")
    return _user_loss(spec), f"{spec} (--loss)"


def _per_token(output: Any, targets: torch.Tensor) -> bool:
    """(batch, tokens, classes) logits for (batch, tokens) targets: torch wants classes 2nd."""
    logits = main_output(output)
    return (
        logits is not None
        and logits.ndim == targets.ndim + 1
        and logits.ndim >= 3
        and tuple(logits.shape[:-1]) == tuple(targets.shape)
    )


def token_cross_entropy(output: Any, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the output's logits, per token when they are laid out per token.

    Targets of -100 (padding, prompt tokens, the last position) are left out, as in
    torch and Hugging Face.
    """
    import torch.nn.functional as F

    logits = main_output(output)
    if logits is None:
        raise ValueError("the model's output holds no floating-point logits")
    if _per_token(logits, targets):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return F.cross_entropy(logits, targets)


def language_targets(
    inputs: Any, targets: torch.Tensor | None, logits: Any, causal: bool | None
) -> tuple[torch.Tensor | None, str | None]:
    """Next-token targets for a causal language model, and how they were made.

    A (batch, tokens) id batch whose output is (batch, tokens, vocab) logits is a language
    model's. Without targets (and unless the model is known not to be causal) the targets
    are the ids shifted by one; labels equal to the ids (Hugging Face's convention, -100
    where no loss is taken) are shifted the same way. Other targets are left as given.
    """
    ids = _token_ids(inputs)
    if causal is False or ids is None or logits is None or logits.ndim != 3:
        return targets, None
    if tuple(logits.shape[:2]) != tuple(ids.shape) or int(ids.max()) >= logits.shape[-1]:
        return targets, None
    if targets is None:
        mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
        labels = ids if mask is None else ids.masked_fill(mask == 0, IGNORE_INDEX)
        return _shifted(labels), "next token"
    if targets.shape == ids.shape and not targets.is_floating_point():
        scored = targets != IGNORE_INDEX
        if bool(scored.any()) and bool((targets[scored] == ids[scored]).all()):
            return _shifted(targets), "next token, labels shifted"
    return targets, None


def _token_ids(inputs: Any) -> torch.Tensor | None:
    if isinstance(inputs, dict):
        ids = inputs.get("input_ids")
    else:
        ids = inputs[0] if len(inputs) == 1 else None
    if ids is None or ids.is_floating_point() or ids.ndim != 2 or ids.dtype.is_complex:
        return None
    return ids if ids.numel() and int(ids.min()) >= 0 else None


def _shifted(labels: torch.Tensor) -> torch.Tensor:
    """Position t predicts token t + 1; the last position predicts nothing."""
    import torch

    out = torch.full_like(labels, IGNORE_INDEX)
    out[:, :-1] = labels[:, 1:]
    return out


def _mse(output: Any, targets: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    output = main_output(output)
    # mse_loss broadcasts (32, 1) against (32,) into a (32, 32) loss with only a warning.
    if output.shape != targets.shape:
        raise ValueError(
            f"output shape {list(output.shape)} differs from targets shape {list(targets.shape)}"
        )
    return F.mse_loss(output, targets.to(output.dtype))


def _bce(output: Any, targets: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    output = main_output(output)
    # Integer or boolean 0/1 labels are common; the loss needs them in the output's dtype.
    return F.binary_cross_entropy_with_logits(output, targets.to(output.dtype))


def _user_loss(spec: str) -> LossFn:
    import torch

    target, _folder = import_target(spec, "--loss")
    # `torch.nn:CrossEntropyLoss` names a class: the loss is an instance of it.
    if isinstance(target, type) and issubclass(target, torch.nn.Module):
        try:
            return target()
        except Exception as exc:
            raise InputError(spec, f"{target.__name__}() raised {_describe(exc)}") from None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = target
    return loss


# ------------------------------------------------------------------ the check


def _first_output(model: torch.nn.Module, inputs: Any, spec: str, batch_path: str) -> Any:
    """One forward pass: a batch that does not fit fails here, in one line."""
    import torch

    torch.manual_seed(0)
    try:
        with torch.no_grad():
            return model(**inputs) if isinstance(inputs, dict) else model(*inputs)
    except Exception as exc:
        raise InputError(batch_path, f"the model ({spec}) fails on it: {_describe(exc)}") from None


def _check_loss(probe: Probe, output: Any, torch: Any) -> None:
    """The loss on that output: a scalar and finite, or one line saying why not."""
    if probe.loss_fn is None or probe.targets is None:
        return
    try:
        with torch.no_grad():
            loss = probe.loss_fn(output, probe.targets)
    except Exception as exc:
        raise InputError(
            probe.batch_path,
            f"the loss {probe.loss_name} fails on the model's output: {_describe(exc)}",
        ) from None
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        what = (
            f"shape {list(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        )
        raise InputError(probe.batch_path, f"the loss {probe.loss_name} is not a scalar ({what})")
    if not bool(torch.isfinite(loss).all()):
        raise InputError(
            probe.batch_path, f"the loss {probe.loss_name} is {float(loss)} on this batch"
        )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_one_line(exc)}" if str(exc) else type(exc).__name__


def _one_line(exc: BaseException, lines: int = 1) -> str:
    # Errors from torch span several lines (and C++ stack frames); the first says what failed.
    kept = [line.strip() for line in str(exc).splitlines() if line.strip()][:lines]
    text = " ".join(kept)
    return text if len(text) <= 300 else text[:297] + "..."

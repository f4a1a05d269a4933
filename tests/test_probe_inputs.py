"""`open_probe`: a real digits CNN, its checkpoints and batches, and every way they go wrong."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers_pickles import Payload, touch_marker

from diag.demo import Trained, digits, train
from diag.errors import InputError, UsageError
from diag.loaders.checkpoint import open_checkpoint
from diag.loaders.probe_inputs import match_names, open_probe

MODEL_FILE = '''
import torch
from torch import nn

from diag.demo import build_model


class Named(nn.Module):
    """The digits CNN behind keyword inputs, as a model with several named inputs is."""

    def __init__(self):
        super().__init__()
        self.cnn = build_model()

    def forward(self, pixels, scale):
        return self.cnn(pixels * scale)


def build():
    return build_model()


def build_named():
    return Named()


def broken():
    raise ValueError("needs a GPU")


def not_a_module():
    return 42


def per_sample_loss(output, targets):
    return nn.functional.cross_entropy(output, targets, reduction="none")
'''


@pytest.fixture(scope="module")
def trained() -> Trained:
    return train(epochs=3)  # ~2 s; real weights, not an init


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    x, y, _xv, _yv = digits()
    return x[:32], y[:32]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, trained: Trained, batch: Any) -> dict:
    root = tmp_path_factory.mktemp("probe")
    x, y = batch
    state = trained.model.state_dict()
    (root / "model.py").write_text(MODEL_FILE)
    (root / "bad_import.py").write_text("import diag_no_such_package_xyz\n")
    (root / "bad_syntax.py").write_text("def build(:\n")
    paths = {
        "model": root / "model.py",
        "weights": root / "weights.pt",
        "lightning": root / "final.ckpt",
        "ddp": root / "ddp.pt",
        "init": root / "init.pt",
        "dict": root / "batch.pt",
        "tuple": root / "tuple.pt",
        "aliases": root / "aliases.pt",
        "named": root / "named.pt",
        "nested_named": root / "nested_named.pt",
        "float_targets": root / "float_targets.pt",
        "no_targets": root / "no_targets.pt",
    }
    torch.save(state, paths["weights"])
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in state.items()}, "global_step": 1},
        paths["lightning"],
    )
    torch.save({f"module.{k}": v for k, v in state.items()}, paths["ddp"])
    torch.save(trained.init_state, paths["init"])
    torch.save({"inputs": x, "targets": y}, paths["dict"])
    torch.save((x, y), paths["tuple"])
    torch.save({"x": x, "labels": y}, paths["aliases"])
    torch.save({"pixels": x, "scale": torch.full((32, 1, 1, 1), 2.0), "y": y}, paths["named"])
    torch.save({"inputs": {"pixels": x, "scale": torch.ones(32, 1, 1, 1)}}, paths["nested_named"])
    torch.save({"inputs": x, "targets": F.one_hot(y, 10).double()}, paths["float_targets"])
    torch.save(x, paths["no_targets"])
    return paths


def spec(files: dict, func: str = "build") -> str:
    return f"{files['model']}:{func}"


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


# ------------------------------------------------------------------ what works


@pytest.mark.parametrize("weights", ["weights", "lightning", "ddp"])
def test_checkpoint_weights_are_the_trained_ones(files: dict, trained: Trained, weights: str):
    probe = open_probe(spec(files), str(files["dict"]), checkpoint=open_checkpoint(files[weights]))
    expected = trained.model.state_dict()
    loaded = probe.model.state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name
    assert not probe.model.training
    assert all(p.dtype == torch.float32 for p in probe.model.parameters())
    with torch.no_grad():
        assert torch.allclose(probe.forward(), trained.model.eval()(probe.inputs[0]))


def test_without_checkpoint_the_factory_init_is_used(files: dict, trained: Trained):
    probe = open_probe(spec(files), str(files["dict"]))
    assert not torch.equal(probe.model.fc1.weight, trained.model.fc1.weight)


def test_init_checkpoint_becomes_the_initial_state(files: dict, trained: Trained):
    probe = open_probe(
        spec(files),
        str(files["dict"]),
        checkpoint=open_checkpoint(files["lightning"]),
        init=open_checkpoint(files["init"]),
    )
    assert probe.initial is not None
    assert probe.initial.keys() == trained.init_state.keys()
    for name, tensor in trained.init_state.items():
        assert torch.equal(probe.initial[name], tensor), name
    # The initial state is kept aside, not loaded: the model holds the trained weights.
    assert torch.equal(probe.model.fc1.weight, trained.model.fc1.weight)


@pytest.mark.parametrize("layout", ["dict", "tuple", "aliases"])
def test_batch_layouts_give_positional_inputs_and_targets(files: dict, batch: Any, layout: str):
    x, y = batch
    probe = open_probe(spec(files), str(files[layout]))
    assert isinstance(probe.inputs, tuple) and len(probe.inputs) == 1
    assert torch.equal(probe.inputs[0], x)
    assert probe.targets is not None and torch.equal(probe.targets, y)
    assert probe.batch_size == 32
    assert probe.loss_name == "cross_entropy (integer targets)"
    assert probe.loss_fn is F.cross_entropy


@pytest.mark.parametrize("layout", ["named", "nested_named"])
def test_named_inputs_become_keyword_arguments(files: dict, batch: Any, layout: str):
    probe = open_probe(spec(files, "build_named"), str(files[layout]))
    assert isinstance(probe.inputs, dict)
    assert set(probe.inputs) == {"pixels", "scale"}
    assert torch.equal(probe.inputs["pixels"], batch[0])
    assert (probe.targets is not None) == (layout == "named")


def test_float_targets_choose_mse_and_are_float32(files: dict):
    probe = open_probe(spec(files), str(files["float_targets"]))
    assert probe.loss_name == "mse (floating-point targets)"
    assert probe.targets is not None and probe.targets.dtype == torch.float32
    loss = probe.loss()
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_no_targets_means_no_loss(files: dict):
    probe = open_probe(spec(files), str(files["no_targets"]))
    assert probe.targets is None and probe.loss_fn is None
    assert probe.loss_name.startswith("none")


def test_module_spec_and_explicit_losses(files: dict):
    probe = open_probe("diag.demo:build_model", str(files["dict"]), loss_spec="cross_entropy")
    assert probe.loss_name == "cross_entropy (--loss)"
    probe = open_probe(spec(files), str(files["float_targets"]), loss_spec="bce")
    assert probe.loss_name == "bce (--loss)" and torch.isfinite(probe.loss())
    probe = open_probe(spec(files), str(files["dict"]), loss_spec="torch.nn:CrossEntropyLoss")
    assert isinstance(probe.loss_fn, torch.nn.CrossEntropyLoss)
    reference = F.cross_entropy(probe.forward(), probe.targets)
    assert torch.allclose(probe.loss(), reference)


def test_wrapper_prefix_is_stripped_only_when_it_makes_the_keys_fit():
    wanted = {"fc.weight", "fc.bias"}
    lightning = ["model.fc.weight", "model.fc.bias", "criterion.weight"]
    mapping, ignored = match_names(lightning, wanted)
    assert set(mapping.values()) == wanted and ignored == ["criterion.weight"]
    # A model whose own attribute is called `model` keeps its names.
    mapping, ignored = match_names(["model.fc.weight"], {"model.fc.weight"})
    assert mapping == {"model.fc.weight": "model.fc.weight"} and not ignored


# ------------------------------------------------------------------ what fails, in one line


@pytest.mark.parametrize(
    ("model_spec", "error", "words"),
    [
        ("{root}/missing.py:build", InputError, ["missing.py", "no such file"]),
        ("{root}/model.py", UsageError, ["FILE.py:FUNC"]),
        ("{root}/model.py:", UsageError, ["FILE.py:FUNC"]),
        ("{root}/model.py:nothere", InputError, ["model.py", "'nothere'"]),
        ("{root}/bad_import.py:build", InputError, ["ModuleNotFoundError", "diag_no_such"]),
        ("{root}/bad_syntax.py:build", InputError, ["SyntaxError"]),
        ("{root}/model.py:broken", InputError, ["raised ValueError: needs a GPU"]),
        ("{root}/model.py:not_a_module", InputError, ["returned int", "nn.Module"]),
        ("diag_no_such_package_xyz:build", InputError, ["cannot import", "ModuleNotFound"]),
    ],
)
def test_bad_model_specs(files: dict, model_spec: str, error: type, words: list[str]):
    model_spec = model_spec.format(root=files["model"].parent)
    with pytest.raises(error) as exc:
        open_probe(model_spec, str(files["dict"]))
    text = one_line(exc)
    for word in words:
        assert word in text, text


def test_checkpoint_that_does_not_fit_lists_the_keys(tmp_path: Path, files: dict, trained: Any):
    state = dict(trained.model.state_dict())
    del state["fc2.bias"]
    state["head.weight"] = torch.zeros(3)
    state["fc1.weight"] = torch.zeros(64, 7)
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(InputError) as exc:
        open_probe(
            spec(files), str(files["dict"]), checkpoint=open_checkpoint(tmp_path / "other.pt")
        )
    text = one_line(exc)
    assert text.startswith(str(tmp_path / "other.pt"))
    assert "missing: fc2.bias" in text
    assert "unexpected: head.weight" in text
    assert "fc1.weight [64, 7] in the file, [64, 256] in the model" in text


def test_many_missing_keys_are_capped(tmp_path: Path, files: dict):
    torch.save({"unrelated.weight": torch.zeros(2)}, tmp_path / "tiny.pt")
    with pytest.raises(InputError) as exc:
        open_probe(
            spec(files), str(files["dict"]), checkpoint=open_checkpoint(tmp_path / "tiny.pt")
        )
    text = one_line(exc)
    # The CNN has 15 state entries (with bn2's buffers): 5 are named, the rest counted.
    assert (
        "missing: conv1.weight, conv1.bias, conv2.weight, conv2.bias, bn2.weight (+10 more)" in text
    )
    assert "unexpected: unrelated.weight" in text


def test_batch_that_does_not_fit_the_model(tmp_path: Path, files: dict, batch: Any):
    x, y = batch
    path = tmp_path / "flat.pt"
    torch.save({"inputs": x.flatten(1), "targets": y}, path)  # (32, 64) for a conv net
    with pytest.raises(InputError) as exc:
        open_probe(spec(files), str(path))
    text = one_line(exc)
    assert text.startswith(f"{path}: the model") and "RuntimeError" in text


def test_targets_of_another_length(tmp_path: Path, files: dict, batch: Any):
    x, y = batch
    path = tmp_path / "short.pt"
    torch.save({"inputs": x, "targets": y[:20]}, path)
    with pytest.raises(InputError) as exc:
        open_probe(spec(files), str(path))
    assert "batch sizes differ (inputs[0]: 32, targets: 20)" in one_line(exc)


def test_non_tensor_value_in_batch(tmp_path: Path, files: dict, batch: Any):
    path = tmp_path / "meta.pt"
    torch.save({"inputs": batch[0], "targets": batch[1], "note": "hello"}, path)
    with pytest.raises(InputError) as exc:
        open_probe(spec(files), str(path))
    assert "'note' is a str, not a tensor" in one_line(exc)


@pytest.mark.parametrize("container", ["torch.save", "pickle"])
def test_hostile_batch_is_never_unpickled(tmp_path: Path, files: dict, batch: Any, container):
    marker = tmp_path / "marker"
    payload = Payload(touch_marker, str(marker))
    # Sanity: the payload really does create the marker when unpickled for real.
    pickle.loads(pickle.dumps(payload))
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "hostile.pt"
    if container == "torch.save":
        torch.save({"inputs": batch[0], "targets": payload}, path)
    else:
        path.write_bytes(pickle.dumps({"inputs": batch[0], "targets": payload}))
    with pytest.raises(InputError) as exc:
        open_probe(spec(files), str(path))
    text = one_line(exc)
    assert not marker.exists()
    assert "touch_marker" in text if container == "torch.save" else "not unpickled" in text


def test_loss_that_is_not_a_scalar(files: dict):
    with pytest.raises(InputError) as exc:
        open_probe(spec(files), str(files["dict"]), loss_spec=spec(files, "per_sample_loss"))
    assert "is not a scalar (shape [32])" in one_line(exc)


def test_loss_that_does_not_fit_the_targets(files: dict):
    with pytest.raises(InputError) as exc:  # class indices (32,) against logits (32, 10)
        open_probe(spec(files), str(files["dict"]), loss_spec="mse")
    assert (
        "the loss mse (--loss) fails on the model's output: ValueError: output shape [32, 10]"
        in (one_line(exc))
    )


def test_unusable_loss_specs(files: dict):
    with pytest.raises(UsageError):
        open_probe(spec(files), str(files["dict"]), loss_spec="hinge")
    with pytest.raises(UsageError):
        open_probe(spec(files), str(files["no_targets"]), loss_spec="mse")

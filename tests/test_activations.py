"""record_activations on real models trained on digits: dead ReLU units, saturated tanh/sigmoid."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diag.activations import Activations, record_activations
from diag.demo import Trained, digits, train
from diag.loaders.checkpoint import open_checkpoint
from diag.loaders.probe_inputs import open_probe
from diag.probe import Probe


class ReluMLP(nn.Module):
    """64 -> 48 -> 32 -> 10 with ReLU as a module, in place, or functional."""

    def __init__(self, style: str = "module") -> None:
        super().__init__()
        self.style = style
        self.fc1 = nn.Linear(64, 48)
        self.fc2 = nn.Linear(48, 32)
        self.out = nn.Linear(32, 10)
        self.act = nn.ReLU(inplace=style == "inplace")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.style == "functional":
            return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))
        return self.out(self.act(self.fc2(self.act(self.fc1(x)))))


class TanhMLP(nn.Module):
    """64 -> 32 -> 32 -> 10: an nn.Tanh module, then a functional tanh inside a block."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.act1 = nn.Tanh()
        self.block = nn.ModuleDict({"fc": nn.Linear(32, 32)})
        self.out = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.fc1(x.flatten(1)))
        return self.out(self.block_forward(h))

    def block_forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.block["fc"](h))


class SigmoidGate(nn.Module):
    """A functional sigmoid gate, as in a GRU-style or squeeze-excitation block."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(64, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.out(x * torch.sigmoid(self.gate(x)))


def fit(model: nn.Module, epochs: int = 8) -> nn.Module:
    """A few epochs of Adam on digits: well under a second for these MLPs."""
    x, y, _xv, _yv = digits()
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def probe_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Probe:
    return Probe(model, (x,), y, F.cross_entropy, "cross_entropy", "test", "batch.pt")


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    _x, _y, xv, yv = digits()
    return xv[:128], yv[:128]  # held-out digits, as a user's --batch would be


@pytest.fixture(scope="module")
def cnn() -> Trained:
    return train(epochs=3)


@pytest.fixture(scope="module")
def relu_mlp() -> nn.Module:
    torch.manual_seed(0)
    return fit(ReluMLP())


@pytest.fixture(scope="module")
def tanh_mlp() -> nn.Module:
    torch.manual_seed(0)
    return fit(TanhMLP())


def dead_fraction(acts: Activations) -> float:
    relu = [layer for layer in acts.layers if layer.consumer == "relu"]
    return sum(layer.n_dead for layer in relu) / sum(layer.n_units for layer in relu)


# ------------------------------------------------------------------ dead units


def test_healthy_cnn_has_few_dead_units(cnn: Trained, batch: Any):
    acts = record_activations(probe_of(cnn.model, *batch))
    layers = {layer.name: layer for layer in acts.layers}
    # conv1 is called functionally (F.conv2d with the module's weight): found all the same.
    assert list(layers) == ["conv1", "conv2", "fc1", "fc2", "out"]
    assert [layers[n].consumer for n in layers] == ["relu", "relu", "relu", "relu", "none"]
    assert layers["conv2"].through == "bn2"  # measured where the ReLU sees it
    assert layers["conv1"].n_units == 16 and layers["fc1"].n_units == 64
    assert layers["conv1"].observations == 128 * 8 * 8  # every pixel position counts
    assert dead_fraction(acts) < 0.1
    assert all(0.1 < layer.positive_fraction < 0.95 for layer in acts.layers)
    assert acts.saturations == [] and acts.notes == []


def test_huge_negative_bias_kills_every_unit_of_that_layer(cnn: Trained, batch: Any):
    healthy = record_activations(probe_of(cnn.model, *batch))
    broken = copy.deepcopy(cnn.model)
    with torch.no_grad():
        broken.fc2.bias -= 100
    acts = record_activations(probe_of(broken, *batch))
    fc2 = acts.layer("fc2")
    assert fc2 is not None
    assert fc2.n_dead == fc2.n_units == 32
    assert fc2.dead == tuple(range(32))
    assert fc2.positive_fraction == 0.0
    # Only that layer: the layers before it are untouched.
    for name in ("conv1", "conv2", "fc1"):
        assert acts.layer(name) == healthy.layer(name)


def test_record_does_not_touch_the_probe_model(cnn: Trained, batch: Any):
    probe = probe_of(cnn.model, *batch)
    before = {k: v.clone() for k, v in cnn.model.state_dict().items()}
    record_activations(probe)
    assert all(torch.equal(before[k], v) for k, v in cnn.model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in cnn.model.modules())


@pytest.mark.parametrize("style", ["functional", "inplace"])
def test_functional_and_inplace_relu_are_covered_like_nn_relu(
    relu_mlp: nn.Module, batch: Any, style: str
):
    reference = record_activations(probe_of(relu_mlp, *batch))
    other = ReluMLP(style)
    other.load_state_dict(relu_mlp.state_dict())
    acts = record_activations(probe_of(other.eval(), *batch))
    assert acts.layers == reference.layers
    assert [layer.consumer for layer in acts.layers] == ["relu", "relu", "none"]
    with torch.no_grad():
        other.fc1.bias -= 100
    dead = record_activations(probe_of(other, *batch)).layer("fc1")
    assert dead is not None and dead.n_dead == 48


def test_through_open_probe(tmp_path: Path, cnn: Trained, batch: Any):
    (tmp_path / "model.py").write_text(
        "from diag.demo import build_model\n\ndef build():\n    return build_model()\n"
    )
    torch.save({"state_dict": {f"model.{k}": v for k, v in cnn.model.state_dict().items()}},
               tmp_path / "final.ckpt")  # fmt: skip
    torch.save({"inputs": batch[0], "targets": batch[1]}, tmp_path / "batch.pt")
    probe = open_probe(
        f"{tmp_path / 'model.py'}:build",
        str(tmp_path / "batch.pt"),
        checkpoint=open_checkpoint(tmp_path / "final.ckpt"),
    )
    direct = record_activations(probe_of(cnn.model, *batch))
    assert record_activations(probe).layers == direct.layers


# ------------------------------------------------------------------ saturation


def test_healthy_tanh_is_not_saturated(tanh_mlp: nn.Module, batch: Any):
    acts = record_activations(probe_of(tanh_mlp, *batch))
    sites = {site.name: site for site in acts.saturations}
    # The module is named by itself; the functional call by its enclosing module (the root
    # here, since block_forward is a plain method) and the function.
    assert set(sites) == {"act1", "tanh"}
    for site in sites.values():
        assert site.function == "tanh"
        assert site.fraction < 0.1, site
        assert site.where is not None and site.where.startswith("test_activations.py:")
        assert site.unit_fractions is not None and len(site.unit_fractions) == 32
    assert sites["act1"].observations == 128 * 32
    assert acts.layer("fc1").consumer == "tanh"  # type: ignore[union-attr]
    assert acts.layer("block.fc").consumer == "tanh"  # type: ignore[union-attr]


def test_weights_scaled_20x_saturate_the_tanh(tanh_mlp: nn.Module, batch: Any):
    scaled = copy.deepcopy(tanh_mlp)
    with torch.no_grad():
        for module in scaled.modules():
            if isinstance(module, nn.Linear):
                module.weight *= 20
    acts = record_activations(probe_of(scaled, *batch))
    assert len(acts.saturations) == 2
    saturated = sum(site.saturated for site in acts.saturations)
    assert saturated / sum(site.observations for site in acts.saturations) > 0.9
    # Measured: act1 88% (digits are mostly blank pixels, so some first-layer sums stay
    # near zero even at 20x), block.tanh 97%. The healthy model: 0% and 2%.
    for site in acts.saturations:
        assert site.fraction > 0.8, site
        assert site.unit_fractions is not None
        assert sum(f > 0.5 for f in site.unit_fractions) > 0.9 * len(site.unit_fractions)


def test_functional_sigmoid_is_detected(batch: Any):
    model = fit(SigmoidGate(), epochs=2)
    acts = record_activations(probe_of(model, *batch))
    assert [(s.name, s.function) for s in acts.saturations] == [("sigmoid", "sigmoid")]
    assert acts.layer("gate").consumer == "sigmoid"  # type: ignore[union-attr]
    with torch.no_grad():
        model.gate.bias += 50  # every gate wide open: sigmoid pinned at 1
    site = record_activations(probe_of(model, *batch)).saturations[0]
    assert site.fraction == 1.0 and site.unit_fractions == (1.0,) * 64

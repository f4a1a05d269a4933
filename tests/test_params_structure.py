"""The params rules reason from a model's structure: which layer sees the input, which one
is the output head, which infinities are constants, which zero units are pruning."""

from __future__ import annotations

import math

import pytest
import torch
from test_rules import conv, healthy, linear, smooth_conv, with_
from torch import nn

from diag.api import CheckOptions, check
from diag.loaders.checkpoint import open_checkpoint
from diag.model import Severity


def run(path, *rules: str) -> list:
    result, _ = check(CheckOptions(str(path), select=list(rules)))
    assert not result.errors, result.errors
    return list(result.findings)


def saved(tmp_path, state: dict, name: str = "final.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return path


class MobileStem(nn.Module):
    """A stem conv on RGB, then a depthwise conv and a pointwise conv, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise = nn.Conv2d(8, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.depthwise(torch.relu(self.stem(x))))
        return self.head(torch.relu(self.pointwise(x)).mean(dim=(2, 3)))


def export(model: nn.Module, path) -> None:
    model.eval()
    torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False)


def mobile(stem_smooth: bool) -> MobileStem:
    torch.manual_seed(0)
    model = MobileStem()
    with torch.no_grad():
        # The depthwise kernels stay random: rough filters are normal deep in a network.
        model.depthwise.weight.copy_(conv(8, 1, 3, seed=3))
        if stem_smooth:
            model.stem.weight.copy_(smooth_conv(8, 3).repeat(1, 3, 1, 1))
    return model


def test_onnx_graph_names_the_stem_as_input_and_the_classifier_as_output(tmp_path):
    export(mobile(stem_smooth=True), tmp_path / "m.onnx")
    infos = open_checkpoint(tmp_path / "m.onnx").table.infos()
    positions = {i.shape: i.position for i in infos if i.position}
    assert positions == {(8, 3, 3, 3): "input", (10, 16): "output"}


def test_random_depthwise_kernels_deep_in_a_graph_are_not_first_layer_noise(tmp_path):
    export(mobile(stem_smooth=True), tmp_path / "m.onnx")
    assert run(tmp_path / "m.onnx", "noisy-kernels") == []


def test_a_random_stem_in_a_graph_is_still_noise(tmp_path):
    export(mobile(stem_smooth=False), tmp_path / "m.onnx")
    found = run(tmp_path / "m.onnx", "noisy-kernels")
    assert len(found) == 1 and found[0].evidence["n_kernels"] == 24


def test_state_dict_judges_only_the_first_conv_in_module_order(tmp_path):
    state = {
        "stem.weight": smooth_conv(8, 3),
        "blocks.0.depthwise.weight": conv(8, 1, 3, seed=4),  # one input channel, not first
        "fc.weight": linear(10, 8),
    }
    assert run(saved(tmp_path, state), "noisy-kernels") == []
    state["stem.weight"] = conv(8, 1, 3, seed=5)
    found = run(saved(tmp_path, state), "noisy-kernels")
    assert [f.location.object for f in found] == ["stem.weight"]


def collapsed_rows(out: int, fan_in: int, copies: int) -> torch.Tensor:
    w = linear(out, fan_in, seed=9)
    w[out - copies :] = w[out - 1]
    return w


def test_copies_in_the_output_head_are_classes_without_data_not_symmetry(tmp_path):
    state = with_(healthy(), fc2__weight=collapsed_rows(10, 32, 3))
    found = run(saved(tmp_path, state), "symmetric-units")
    assert [(f.location.object, f.severity) for f in found] == [("fc2.weight", Severity.INFO)]
    assert found[0].evidence["output_head"] is True


def test_copies_in_a_hidden_layer_are_an_error(tmp_path):
    state = with_(healthy(), fc1__weight=collapsed_rows(32, 64, 3))
    found = run(saved(tmp_path, state), "symmetric-units")
    assert [(f.location.object, f.severity) for f in found] == [("fc1.weight", Severity.ERROR)]


def test_a_head_that_is_mostly_copies_is_still_an_error(tmp_path):
    state = with_(healthy(), fc2__weight=collapsed_rows(10, 32, 8))
    found = run(saved(tmp_path, state), "symmetric-units")
    assert [f.severity for f in found] == [Severity.ERROR]


def test_a_constant_layer_is_one_finding_not_also_symmetric_units(tmp_path):
    state = with_(healthy(), fc1__weight=torch.full((32, 64), 0.05))
    found = run(saved(tmp_path, state), "params")
    assert {(f.rule, f.location.object) for f in found} == {("constant-parameter", "fc1.weight")}


def test_a_mask_buffer_of_zeros_and_minus_inf_is_not_a_nonfinite_parameter(tmp_path):
    mask = torch.full((8, 8), -math.inf).triu(1)
    state = with_(healthy(), **{"attn__mask": mask})
    assert run(saved(tmp_path, state), "nonfinite-parameter") == []
    # The same infinity in a weight whose values vary is a divergence.
    weight = linear(32, 64)
    weight[3, 5] = -math.inf
    found = run(saved(tmp_path, with_(healthy(), fc1__weight=weight)), "nonfinite-parameter")
    assert [f.location.object for f in found] == ["fc1.weight"]


class MaskedLogits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.register_buffer("fill", torch.tensor(-math.inf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(x)
        return torch.where(logits > 0, logits, self.fill)


def test_an_exported_scalar_minus_inf_constant_is_not_a_parameter(tmp_path):
    model = MaskedLogits()
    model.eval()
    torch.onnx.export(model, (torch.randn(1, 6),), str(tmp_path / "m.onnx"), dynamo=False)
    assert run(tmp_path / "m.onnx", "nonfinite-parameter") == []
    with torch.no_grad():
        model.fc.weight[0, 0] = math.nan
    torch.onnx.export(model, (torch.randn(1, 6),), str(tmp_path / "nan.onnx"), dynamo=False)
    assert len(run(tmp_path / "nan.onnx", "nonfinite-parameter")) == 1


def zero_rows(w: torch.Tensor, rows: list[int]) -> torch.Tensor:
    return w.index_fill(0, torch.tensor(rows), 0.0)


@pytest.mark.parametrize("layers", [1, 2])
def test_zero_units_in_one_or_two_layers_are_warnings_each(tmp_path, layers):
    state = {f"l{i}.weight": zero_rows(linear(16, 16, seed=i), [1, 2]) for i in range(layers)}
    state.update({f"ok{i}.weight": linear(16, 16, seed=10 + i) for i in range(4)})
    found = run(saved(tmp_path, state), "dead-units")
    assert sorted(f.location.object for f in found) == [f"l{i}.weight" for i in range(layers)]
    assert {f.severity for f in found} == {Severity.WARNING}


def test_zero_units_across_many_layers_are_one_pruning_note(tmp_path):
    state = {f"l{i}.weight": zero_rows(linear(16, 16, seed=i), [i, 7]) for i in range(4)}
    found = run(saved(tmp_path, state), "dead-units")
    assert len(found) == 1 and found[0].severity == Severity.INFO
    assert found[0].evidence["layers"] == 4 and found[0].evidence["dead"] == 8
    assert found[0].location.details["layers"] == [f"l{i}.weight" for i in range(4)]


def test_copies_grown_from_a_constant_init_are_reported_once_on_the_init(tmp_path):
    init = with_(healthy(), fc1__weight=torch.full((32, 64), 0.05))
    trained = with_(healthy(), fc1__weight=collapsed_rows(32, 64, 32))
    result, _ = check(
        CheckOptions(
            str(saved(tmp_path, trained)),
            str(saved(tmp_path, init, "init.pt")),
            select=["constant-parameter", "symmetric-units"],
        )
    )
    found = {(f.rule, f.location.artifact.endswith("init.pt")) for f in result.findings}
    assert found == {("constant-parameter", True)}
    # Without the init, the copies are all there is to see.
    assert [f.rule for f in run(saved(tmp_path, trained), "symmetric-units")] == ["symmetric-units"]


def test_a_constant_embedding_table_in_a_trained_checkpoint_is_an_error(tmp_path):
    state = with_(healthy(), embed__weight=torch.full((100, 16), 0.05, dtype=torch.float16))
    found = run(saved(tmp_path, state), "constant-parameter")
    assert [(f.location.object, f.severity) for f in found] == [("embed.weight", Severity.ERROR)]
    state["embed.weight"] = torch.randn(100, 16).half()
    assert run(saved(tmp_path, state), "constant-parameter") == []


def near_copies(out: int, fan_in: int, copies: int, distance: float) -> torch.Tensor:
    """A random layer whose last `copies` rows sit `distance` (relative) from row 0."""
    w = linear(out, fan_in, seed=11)
    g = torch.Generator().manual_seed(12)
    for row in range(out - copies, out):
        step = torch.randn(fan_in, generator=g)
        w[row] = w[0] + step / step.norm() * distance * w[0].norm()
    return w


def test_one_near_pair_in_a_healthy_layer_is_not_symmetry(tmp_path):
    # Measured on a healthy digits CNN (seed 1, AVX-512): two of 64 units 0.30% apart.
    state = with_(healthy(), fc1__weight=near_copies(32, 64, 1, 0.003))
    assert run(saved(tmp_path, state), "symmetric-units") == []


def test_near_copies_across_most_of_a_layer_are_symmetry(tmp_path):
    state = with_(healthy(), fc1__weight=near_copies(32, 64, 24, 0.001))
    found = run(saved(tmp_path, state), "symmetric-units")
    assert [(f.location.object, f.severity) for f in found] == [("fc1.weight", Severity.ERROR)]

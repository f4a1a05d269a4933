"""The params rules on real models trained on digits: silent when healthy, firing when broken."""

from __future__ import annotations

import pytest

from diag.api import CheckOptions, check
from diag.model import Severity


def findings(paths: dict, *, init: bool = True, key: str = "final") -> list:
    options = CheckOptions(checkpoint=str(paths[key]), init=str(paths["init"]) if init else None)
    result, _ = check(options)
    assert not result.errors, result.errors
    return list(result.findings)


def by_rule(found: list) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in found:
        out.setdefault(f.rule, set()).add(f.location.object)
    return out


def test_healthy_run_trains_well_and_is_silent(runs):
    assert runs["healthy"]["accuracy"] > 0.9
    assert findings(runs["healthy"]) == []


@pytest.mark.parametrize("key", ["final", "safetensors", "onnx"])
def test_healthy_model_in_every_format_has_no_error(runs, key):
    found = findings(runs["healthy"], init=False, key=key)
    assert not [f for f in found if f.severity == Severity.ERROR]


def test_healthy_first_layer_is_smooth_and_its_init_is_noise(runs):
    from diag.loaders.checkpoint import open_checkpoint
    from diag.rules.kernels import kernel_noise

    final = open_checkpoint(runs["healthy"]["final"]).table.read("conv1.weight").numpy()
    init = open_checkpoint(runs["healthy"]["init"]).table.read("conv1.weight").numpy()
    trained, random = kernel_noise(final), kernel_noise(init)
    assert trained.median_autocorr > 0.3 and trained.p_value < 0.01
    assert abs(random.median_autocorr) < 0.15 and random.p_value > 0.05


def test_planted_faults_are_each_found_and_named(runs):
    assert runs["planted"]["accuracy"] > 0.5  # a silent failure: the model still "works"
    found = by_rule(findings(runs["planted"]))
    assert found["stuck-parameter"] == {"conv1.weight"}
    assert found["noisy-kernels"] == {"conv1.weight"}
    assert found["constant-parameter"] == {"fc1.weight"}
    assert set(found) == {"stuck-parameter", "noisy-kernels", "constant-parameter"}


def test_planted_stuck_conv_is_an_error_from_optimizer_state_alone(runs):
    found = findings(runs["planted"], init=False)
    stuck = [f for f in found if f.rule == "stuck-parameter"]
    assert [(f.location.object, f.severity) for f in stuck] == [("conv1.weight", Severity.ERROR)]
    assert stuck[0].evidence["optimizer_state"] is False


def test_constant_init_everywhere_leaves_symmetric_units(runs):
    # Without the init, the copies the constant init left are what the weights show...
    assert "conv2.weight" in by_rule(findings(runs["constant_all"], init=False))["symmetric-units"]
    # ...with it, the cause is named once, on the init, and not again as symmetric units.
    found = by_rule(findings(runs["constant_all"]))
    assert "symmetric-units" not in found
    assert {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "out.weight"} <= found[
        "constant-parameter"
    ]


def test_training_in_eval_mode_leaves_batchnorm_statistics_at_init(runs):
    found = findings(runs["eval_mode"])
    stale = [f for f in found if f.rule == "stuck-parameter"]
    assert [f.location.object for f in stale] == ["bn2"]
    assert stale[0].severity == Severity.ERROR
    assert stale[0].evidence["num_batches_tracked"] == 0


def test_unit_normal_init_is_flagged_as_too_large(runs):
    found = findings(runs["big_init"])
    flagged = {f.location.object for f in found if f.rule == "init-scale"}
    # He std is sqrt(2/fan_in): 0.28 for conv1 (fan-in 25), so N(0, 1) is 3.5x above it.
    assert flagged == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "out.weight"}
    assert all(f.severity == Severity.WARNING for f in found if f.rule == "init-scale")


def test_default_init_of_every_run_is_not_flagged(runs):
    for name in ("healthy", "planted", "eval_mode"):
        found = findings(runs[name])
        assert not [f for f in found if f.rule == "init-scale"], name

"""The [grads] rules through `diag check --model --batch`, on models trained on real digits.

A healthy CNN (ReLU, max-pool, BatchNorm, dropout) trained on digits must give no warning;
each planted fault must be found and named: a layer killed by a huge negative bias,
saturated tanh units, a softmax before the cross-entropy, a model that ignores its input,
an initialisation far too large, a broken custom backward, a detached layer, a reshape
that mixes the batch.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from diag.cli import cli
from diag.demo import digits

MODELS = textwrap.dedent(
    '''
    import torch
    from torch import nn
    from torch.nn import functional as F

    from diag.demo import Faults, build_model


    class DropoutCNN(nn.Module):
        """ReLU, max-pool, BatchNorm and dropout: everything that must not cause alarms."""

        def __init__(self, mix_batch=False, ignore_input=False):
            super().__init__()
            self.mix_batch, self.ignore_input = mix_batch, ignore_input
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
            self.drop = nn.Dropout(0.3)
            self.fc1 = nn.Linear(16 * 4 * 4, 32)
            self.out = nn.Linear(32, 10)

        def forward(self, x):
            if self.ignore_input:
                x = torch.zeros_like(x)
            x = F.relu(self.bn1(self.conv1(x)))
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            if self.mix_batch:  # a transposed reshape: samples bleed into each other
                b = x.shape[0]
                x = x.permute(1, 0, 2, 3).reshape(b, -1)
            else:
                x = x.flatten(1)
            x = self.drop(F.relu(self.fc1(x)))
            return self.out(x)


    class TanhMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(64, 64)
            self.fc2 = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


    def healthy():
        return DropoutCNN()

    def mixing():
        return DropoutCNN(mix_batch=True)

    def ignoring():
        return DropoutCNN(ignore_input=True)

    def tanh_mlp():
        return TanhMLP()

    def demo_cnn():
        return build_model(Faults())

    def broken_backward():
        return build_model(Faults(broken_backward=True))

    def detached():
        return build_model(Faults(detach_conv1=True))

    def softmax_loss(output, target):
        return F.cross_entropy(F.softmax(output, dim=-1), target)
    '''
)


def _train(model: torch.nn.Module, epochs: int = 4) -> torch.nn.Module:
    x, y, _, _ = digits(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import importlib.util

    root = tmp_path_factory.mktemp("grads")
    (root / "models.py").write_text(MODELS, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("grads_models", root / "models.py")
    assert spec is not None and spec.loader is not None
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    torch.manual_seed(0)
    for name in ("healthy", "mixing", "tanh_mlp", "demo_cnn", "broken_backward", "detached"):
        trained = _train(getattr(models, name)())
        torch.save(trained.state_dict(), root / f"{name}.pt")
    torch.manual_seed(0)
    torch.save(models.healthy().state_dict(), root / "healthy_init.pt")
    big = models.healthy()
    with torch.no_grad():
        for p in big.parameters():
            if p.dim() > 1:
                p.normal_(0, 1.0)
    torch.save(big.state_dict(), root / "big_init.pt")
    dead = models.healthy()
    dead.load_state_dict(torch.load(root / "healthy.pt", weights_only=True))
    with torch.no_grad():
        dead.fc1.bias -= 100.0
    torch.save(dead.state_dict(), root / "dead.pt")
    sat = models.tanh_mlp()
    sat.load_state_dict(torch.load(root / "tanh_mlp.pt", weights_only=True))
    with torch.no_grad():
        sat.fc1.weight *= 20.0
        sat.fc1.bias *= 20.0
    torch.save(sat.state_dict(), root / "tanh_saturated.pt")
    _, _, xv, yv = digits(0)
    torch.save({"inputs": xv[:32], "targets": yv[:32]}, root / "batch.pt")
    return root


def _check(folder: Path, factory: str, weights: str, *extra: str) -> dict:
    args = [
        "check", str(folder / f"{weights}.pt"), "--model", f"{folder / 'models.py'}:{factory}",
        "--batch", str(folder / "batch.pt"), "--format", "json", "--quiet", *extra,
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.output)


def _serious(report: dict, group: str = "grads") -> set[tuple[str, str]]:
    return {
        (f["rule"], f["location"]["object"])
        for f in report["findings"]
        if f["severity"] in ("warning", "error")
        and (f["group"] == group or f["rule"] == "dead-units")
    }


@pytest.mark.parametrize(("factory", "weights"), [("healthy", "healthy"), ("demo_cnn", "demo_cnn")])
def test_healthy_trained_models_give_no_warning(folder, factory, weights):
    # (the init file belongs to the first architecture only)
    extra = ("--init", str(folder / "healthy_init.pt")) if factory == "healthy" else ()
    assert _serious(_check(folder, factory, weights, *extra)) == set()


def test_a_layer_killed_by_a_negative_bias_is_dead(folder):
    found = _serious(_check(folder, "healthy", "dead"))
    assert ("dead-units", "fc1.weight") in found


def test_saturated_tanh_is_found(folder):
    assert ("saturated-activations", "tanh") in {
        (r, o.split(".")[-1]) for r, o in _serious(_check(folder, "tanh_mlp", "tanh_saturated"))
    }
    assert _serious(_check(folder, "tanh_mlp", "tanh_mlp")) == set()


def test_a_softmax_before_cross_entropy_cannot_overfit_one_batch(folder):
    loss = f"{folder / 'models.py'}:softmax_loss"
    report = _check(folder, "healthy", "healthy", "--loss", loss)
    (finding,) = [f for f in report["findings"] if f["rule"] == "overfit-one-batch"]
    assert finding["evidence"]["ratio"] > 0.3


def test_a_model_ignoring_its_input_is_found(folder):
    found = _serious(_check(folder, "ignoring", "healthy"))
    assert ("input-independence", "inputs") in found


def test_an_initialisation_far_too_large_gives_an_init_loss_warning(folder):
    report = _check(folder, "healthy", "healthy", "--init", str(folder / "big_init.pt"))
    (finding,) = [f for f in report["findings"] if f["rule"] == "init-loss"]
    assert finding["evidence"]["initial_loss"] > 10 and finding["evidence"]["classes"] == 10


def test_probe_rules_are_skipped_with_a_reason_without_a_model(folder):
    result = CliRunner().invoke(
        cli, ["check", str(folder / "healthy.pt"), "--format", "json", "--quiet"]
    )
    skipped = {s["rule"]: s["reason"] for s in json.loads(result.output)["skipped"]}
    assert skipped["saturated-activations"] == "needs --model and --batch"
    assert skipped["init-loss"] == "needs --model, --batch and --init"


def test_bad_model_specs_exit_2_with_one_line(folder, tmp_path):
    import hostile_sandbox as hs

    def refused(spec: str, batch: Path, fragment: str) -> None:
        args = [str(folder / "healthy.pt"), "--model", spec, "--batch", str(batch)]
        outcome = hs.run_diag(args, tmp_path)
        hs.check_invariants(outcome, allowed=[folder, tmp_path])
        hs.check_refused(outcome, fragment)

    refused(f"{tmp_path / 'missing.py'}:build", folder / "batch.pt", "missing.py")
    refused(f"{folder / 'models.py'}:nope", folder / "batch.pt", "nope")
    torch.save(
        {"inputs": torch.zeros(4, 3, 5, 5), "targets": torch.zeros(4).long()}, tmp_path / "b.pt"
    )
    refused(f"{folder / 'models.py'}:healthy", tmp_path / "b.pt", "b.pt")


def test_a_broken_custom_backward_is_a_gradient_mismatch_on_its_weight(folder):
    report = _check(folder, "broken_backward", "broken_backward")
    found = {o for r, o in _serious(report) if r == "gradient-mismatch"}
    assert found == {"fc2.weight"}
    (finding,) = [f for f in report["findings"] if f["rule"] == "gradient-mismatch"]
    assert 0.3 < finding["evidence"]["relative_error"] < 0.7  # the backward halves it


def test_a_detached_layer_is_disconnected(folder):
    found = {
        o
        for r, o in _serious(_check(folder, "detached", "detached"))
        if r == "gradient-disconnected"
    }
    assert found == {"conv1.weight"}


def test_a_reshape_across_the_batch_is_batch_mixing(folder):
    found = _serious(_check(folder, "mixing", "mixing"))
    assert ("batch-mixing", "batch dimension") in found
    assert ("batch-mixing", "batch dimension") not in _serious(_check(folder, "healthy", "healthy"))


def test_the_html_report_has_the_gradient_table_and_dead_unit_bars(folder, tmp_path):
    out = tmp_path / "r.html"
    args = [
        "check", str(folder / "broken_backward.pt"), "--model",
        f"{folder / 'models.py'}:broken_backward", "--batch", str(folder / "batch.pt"),
        "--html", str(out), "--quiet",
    ]  # fmt: skip
    CliRunner().invoke(cli, args)
    page = out.read_text(encoding="utf-8")
    section = page[page.index('<section id="probe"') :]
    section = section[: section.index("</section>")]
    assert section.count('class="verdict-mismatch"') == 1
    assert section.count('class="verdict-ok"') >= 8
    # conv1, conv2, fc1, out: fc2 runs inside the custom Function, where no linear call is seen
    assert section.count('<rect class="bar') == 4


def test_a_frozen_parameter_the_optimizer_trained_is_reported(folder, tmp_path):
    import importlib.util

    (tmp_path / "frozen.py").write_text(
        MODELS + "\n\ndef frozen():\n    m = DropoutCNN()\n    m.fc1.weight.requires_grad_(False)\n"
        "    return m\n",
        encoding="utf-8",
    )
    spec = importlib.util.spec_from_file_location("frozen_models", tmp_path / "frozen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.healthy()  # trained with every parameter, as the optimizer state shows
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y, _, _ = digits(0)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:64]), y[:64]).backward()
        optimizer.step()
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, ckpt)
    args = [
        "check", str(ckpt), "--model", f"{tmp_path / 'frozen.py'}:frozen",
        "--batch", str(folder / "batch.pt"), "--format", "json", "--quiet",
        "--select", "gradient-disconnected",
    ]  # fmt: skip
    report = json.loads(CliRunner().invoke(cli, args).output)
    assert [(f["location"]["object"], f["evidence"]) for f in report["findings"]] == [
        ("fc1.weight", {"frozen": True, "optimizer_state": True})
    ]

"""`diag.gradients.check_gradients` against `torch.autograd.gradcheck`, then on a ResNet-18.

    .venv/bin/python bench/bench_gradients.py [--skip-gradcheck] [--size 64] [--batch 4]

(a) A 38,538-parameter CNN (conv 5x5 -> conv 3x3 -> two linear layers, ReLU and max-pool)
    on a batch of 4 digits upsampled to 16x16, healthy and with a custom autograd Function
    whose backward halves fc1's weight gradient. gradcheck gets the parameters as its
    inputs (`torch.func.functional_call`, float64, default slow mode and tolerances);
    diag gets the same model and batch as a `Probe`. Both tools' time and verdict.
(b) A ResNet-18 (11.7M parameters, 62 tensors, built from torch.nn pieces; BatchNorm
    statistics set by a few train-mode passes) on `--batch` random `--size`^2 images,
    healthy and with the same broken backward in its last linear layer: time and
    verdicts of `check_gradients`.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections import Counter

import torch
from torch import nn
from torch.nn import functional as F

from diag.gradients import check_gradients
from diag.probe import Probe


class HalfWeightGradLinear(torch.autograd.Function):
    """A linear layer whose backward loses a factor 2 on the weight's gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return x @ weight.T + bias

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        return grad_out @ weight, 0.5 * (grad_out.T @ x), grad_out.sum(0)


def linear(layer: nn.Linear, x: torch.Tensor, broken: bool) -> torch.Tensor:
    return HalfWeightGradLinear.apply(x, layer.weight, layer.bias) if broken else layer(x)


class SmallCNN(nn.Module):
    def __init__(self, broken: bool = False) -> None:
        super().__init__()
        self.broken = broken
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(32 * 4 * 4, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2).flatten(1)
        return self.fc2(torch.relu(linear(self.fc1, x, self.broken)))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000, broken: bool = False) -> None:
        super().__init__()
        self.broken = broken
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return linear(self.fc, F.adaptive_avg_pool2d(x, 1).flatten(1), self.broken)


def digits_batch(batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images[:batch] / 16.0, dtype=torch.float32).unsqueeze(1)
    return F.interpolate(x, scale_factor=2.0, mode="bilinear"), torch.tensor(data.target[:batch])


def probe_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Probe:
    return Probe(model, (x,), y, F.cross_entropy, "cross_entropy", "bench", "<memory>")


def run_gradcheck(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, str]:
    """gradcheck over all parameters at once: the function of the inputs it needs."""
    from torch.autograd.gradcheck import GradcheckError
    from torch.func import functional_call

    model = model.double().eval()
    names = [name for name, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    x64 = x.double()

    def loss(*values: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            functional_call(model, dict(zip(names, values, strict=True)), (x64,)), y
        )

    start = time.perf_counter()
    try:
        torch.autograd.gradcheck(loss, params)
        verdict = "pass"
    except GradcheckError as error:
        found = re.search(r"with respect to input (\d+)", str(error))
        verdict = f"FAIL ({names[int(found.group(1))] if found else str(error)[:80]})"
    return time.perf_counter() - start, verdict


def run_diag(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, str, list]:
    start = time.perf_counter()
    results = check_gradients(probe_of(model, x, y))
    seconds = time.perf_counter() - start
    counts = Counter(r.verdict for r in results)
    named = [f"{r.name}: {r.verdict}" for r in results if r.verdict != "ok"]
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    return seconds, summary + (f" [{'; '.join(named)}]" if named else ""), results


def part_a(skip_gradcheck: bool) -> None:
    x, y = digits_batch()
    print(
        f"\n(a) CNN, {sum(p.numel() for p in SmallCNN().parameters()):,} parameters, batch 4x16x16"
    )
    print(f"{'model':8s} {'tool':16s} {'time s':>8s}  verdict")
    for broken in (False, True):
        label = "broken" if broken else "healthy"
        torch.manual_seed(0)
        model = SmallCNN(broken)
        seconds, summary, results = run_diag(model, x, y)
        worst = max(r.relative_error for r in results if r.verdict == "ok")
        print(
            f"{label:8s} {'diag':16s} {seconds:8.3f}  {summary} (worst ok rel. error {worst:.1e})"
        )
        if not skip_gradcheck:
            gc_seconds, verdict = run_gradcheck(model, x, y)
            print(f"{label:8s} {'gradcheck (slow)':16s} {gc_seconds:8.1f}  {verdict}")
            print(f"{label:8s} {'speed-up':16s} {gc_seconds / seconds:8.0f}x")


def calibrated_resnet(broken: bool, size: int) -> nn.Module:
    torch.manual_seed(0)
    model = ResNet18(broken=broken)
    model.train()
    with torch.no_grad():  # BatchNorm running statistics of a few batches, as after training
        for _ in range(3):
            model(torch.randn(8, 3, size, size))
    return model.eval()


def part_b(size: int, batch: int) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=gen)
    y = torch.randint(0, 1000, (batch,), generator=gen)
    print(f"\n(b) ResNet-18, batch {batch}x3x{size}x{size}, {torch.get_num_threads()} threads")
    for broken in (False, True):
        model = calibrated_resnet(broken, size)
        if not broken:
            count = sum(p.numel() for p in model.parameters())
            print(f"    {count:,} parameters in {len(list(model.parameters()))} tensors")
        seconds, summary, results = run_diag(model, x, y)
        passes = sum(r.forward_passes for r in results)
        worst = max(r.relative_error for r in results if r.verdict == "ok")
        kinks = sum(r.kinks for r in results)
        label = "broken" if broken else "healthy"
        print(
            f"{label:8s} diag {seconds:6.1f} s, {passes} forward passes, {kinks} kinks met: "
            f"{summary} (worst ok rel. error {worst:.1e})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-gradcheck", action="store_true")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    # Other processes on a shared 2-core machine inflate every time: say how busy it was.
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    part_a(args.skip_gradcheck)
    part_b(args.size, args.batch)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

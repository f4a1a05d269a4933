"""The gradient check's cost as a multiple of one float32 forward+backward, on three models.

    .venv/bin/python bench/bench_gradients.py [--skip-gradcheck] [--parts cnn,resnet,gpt]
        [--size 64] [--batch 4] [--gpt-steps 3] [--dir /tmp/diag-bench-gradients]

Every row runs in a fresh interpreter (so its peak RSS is its own) that first times one
float32 forward+backward of the same model on the same batch (F, the median of 3 after a
warm-up), then the tool. Columns: wall time, time / F, float64 passes of the check
(forward; plus its one backward), peak RSS of the whole process (model and imports
included) and the verdicts.

(a) A 38,538-parameter CNN (conv 5x5 -> conv 3x3 -> two linear layers, ReLU and max-pool)
    on a batch of 4 digits upsampled to 16x16, healthy and with a custom autograd Function
    whose backward halves fc1's weight gradient; `torch.autograd.gradcheck` side by side
    (the parameters as its inputs, `torch.func.functional_call`, float64, slow mode).
(b) A ResNet-18 (11.7M parameters, 62 tensors, plain torch.nn; BatchNorm statistics from a
    few train-mode passes) on `--batch` random `--size`^2 images, healthy and with the same
    broken backward in its last linear layer.
(c) A GPT-2-small shape in plain torch (124M parameters: 12 blocks, d=768, 12 heads,
    vocabulary 50257, input and output embeddings tied; 148 tensors, 149 names) after
    `--gpt-steps` AdamW steps, on 2 x 64 tokens, healthy and with the broken backward in
    block 6's MLP input layer (`blocks.6.fc.weight` must be named). Both the gradient check
    alone and the whole [grads] group (`diag.api.check(select=["grads"])`, which loads the
    checkpoint itself, as `diag check` does).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from diag.gradients import gradient_report
from diag.probe import Probe

VOCAB, WIDTH, LAYERS, HEADS, CONTEXT = 50257, 768, 12, 12, 1024
BROKEN_BLOCK = 6
GPT_BATCH = (2, 64)


class HalfWeightGradLinear(torch.autograd.Function):
    """A linear layer whose backward loses a factor 2 on the weight's gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return x @ weight.T + bias

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        rows, out = x.reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1])
        return grad_out @ weight, 0.5 * (out.T @ rows), out.sum(0)


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


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, HEADS, -1).transpose(1, 2) for z in self.qkv(x).split(d, 2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class GptBlock(nn.Module):
    def __init__(self, broken: bool) -> None:
        super().__init__()
        self.broken = broken
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.attn = Attention()
        self.fc, self.out = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(linear(self.fc, self.ln2(x), self.broken)))


class Gpt(nn.Module):
    """GPT-2 small's shape: learned positions, pre-norm blocks, a head tied to the embedding."""

    def __init__(self, broken: bool = False) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, WIDTH), nn.Embedding(CONTEXT, WIDTH)
        self.blocks = nn.ModuleList(GptBlock(broken and i == BROKEN_BLOCK) for i in range(LAYERS))
        self.ln_f = nn.LayerNorm(WIDTH)
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():  # GPT-2's initialisation
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def gpt_healthy() -> nn.Module:
    """Factories for `diag check --model bench/bench_gradients.py:gpt_healthy`."""
    return Gpt()


def gpt_broken() -> nn.Module:
    return Gpt(broken=True)


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def digits_batch(batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images[:batch] / 16.0, dtype=torch.float32).unsqueeze(1)
    return F.interpolate(x, scale_factor=2.0, mode="bilinear"), torch.tensor(data.target[:batch])


def calibrated_resnet(broken: bool, size: int) -> nn.Module:
    torch.manual_seed(0)
    model = ResNet18(broken=broken)
    model.train()
    with torch.no_grad():  # BatchNorm running statistics of a few batches, as after training
        for _ in range(3):
            model(torch.randn(8, 3, size, size))
    return model.eval()


# ----------------------------------------------------------------- one row, in a child


def probe_for(model_name: str, variant: str, args: argparse.Namespace) -> Probe:
    broken = variant == "broken"
    if model_name == "cnn":
        torch.manual_seed(0)
        x, y = digits_batch()
        return Probe(SmallCNN(broken), (x,), y, F.cross_entropy, "cross_entropy", "cnn", "-")
    if model_name == "resnet":
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
        y = torch.randint(0, 1000, (args.batch,), generator=gen)
        model = calibrated_resnet(broken, args.size)
        return Probe(model, (x,), y, F.cross_entropy, "cross_entropy", "resnet", "-")
    model = Gpt(broken)
    model.load_state_dict(torch.load(Path(args.dir) / "gpt.pt", mmap=True, weights_only=True))
    ids = torch.load(Path(args.dir) / "batch.pt", weights_only=True)
    return Probe(model.eval(), (ids,), ids, next_token_loss, "next token", "gpt", "-")


def fb_times(probe: Probe, repeats: int = 3) -> list[float]:
    """Float32 forward+backward times of the probe's model on its batch (after a warm-up)."""
    times = []
    for _ in range(repeats + 1):
        probe.model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        probe.loss().backward()
        times.append(time.perf_counter() - start)
    probe.model.zero_grad(set_to_none=True)
    return times[1:]


def run_diag(probe: Probe) -> dict[str, Any]:
    report = gradient_report(probe)
    counts = Counter(r.verdict for r in report.tensors)
    named = [f"{r.name}: {r.verdict}" for r in report.tensors if r.verdict != "ok"]
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    worst = max((r.relative_error for r in report.tensors if r.verdict == "ok"), default=0.0)
    verdict = summary + (f" [{'; '.join(named)}]" if named else "")
    return {
        "passes": f"{report.forward_passes}+1b",
        "verdict": f"{verdict}; {report.suspects} probed alone; worst ok {worst:.1e}",
    }


def run_gradcheck(probe: Probe) -> dict[str, Any]:
    """gradcheck over all parameters at once: the function of the inputs it needs."""
    from torch.autograd.gradcheck import GradcheckError
    from torch.func import functional_call

    model = probe.model.double().eval()
    names = [name for name, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    x64 = probe.inputs[0].double()

    def loss(*values: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, dict(zip(names, values, strict=True)), (x64,))
        return F.cross_entropy(out, probe.targets)

    try:
        torch.autograd.gradcheck(loss, params)
        return {"passes": "", "verdict": "pass"}
    except GradcheckError as error:
        found = re.search(r"with respect to input (\d+)", str(error))
        return {
            "passes": "",
            "verdict": f"FAIL ({names[int(found.group(1))]})" if found else "FAIL",
        }


def run_group(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    from diag.api import CheckOptions, check

    factory = "gpt_broken" if variant == "broken" else "gpt_healthy"
    options = CheckOptions(
        checkpoint=str(Path(args.dir) / "gpt.pt"),
        model=f"{Path(__file__).resolve()}:{factory}",
        batch=str(Path(args.dir) / "batch.pt"),
        select=["grads"],
    )
    result, _ = check(options)
    loud = [f"{f.rule} {f.location.object}" for f in result.findings if f.severity.name != "INFO"]
    timings = result.metadata.get("timings", {})
    slow = sorted(timings.items(), key=lambda kv: -kv[1])[:3]
    spent = ", ".join(f"{k} {v:.0f}s" for k, v in slow)
    return {
        "passes": "",
        "verdict": f"{loud or 'no warning'}; errors {len(result.errors)}; {spent}",
    }


def child(model_name: str, variant: str, tool: str, args: argparse.Namespace) -> None:
    """One row. F, the unit, is the median of float32 forward+backward times taken before
    and after the tool: the load of a shared machine changes while the tool runs."""
    probe = probe_for(model_name, variant, args)
    before = fb_times(probe)
    if tool == "grads group":
        del probe  # the check loads its own model from the checkpoint
    _reset_peak()
    start = time.perf_counter()
    if tool == "diag":
        out = run_diag(probe)
    elif tool == "gradcheck":
        out = run_gradcheck(probe)
    else:
        out = run_group(variant, args)
    seconds = time.perf_counter() - start
    peak = _peak_mib()
    probe = probe_for(model_name, variant, args)  # gradcheck cast its own to float64
    unit = statistics.median(before + fb_times(probe))
    print(json.dumps({"seconds": seconds, "unit": unit, "peak_mib": peak, **out}))


def _reset_peak() -> None:
    """VmHWM back to the current RSS (Linux >= 4.0), so the peak is the tool's work."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------- the table


def prepare_gpt(args: argparse.Namespace) -> None:
    """A few AdamW steps from GPT-2's init (so it is not at init), saved with a batch."""
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = Gpt().train()
    gen = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    for _ in range(args.gpt_steps):
        ids = torch.randint(0, VOCAB, GPT_BATCH, generator=gen)
        optimizer.zero_grad()
        next_token_loss(model(ids), ids).backward()
        optimizer.step()
    torch.save(model.state_dict(), folder / "gpt.pt")
    torch.save(torch.randint(0, VOCAB, GPT_BATCH, generator=gen), folder / "batch.pt")


def row(model_name: str, variant: str, tool: str, args: argparse.Namespace) -> None:
    command = [sys.executable, __file__, "--child", model_name, variant, tool]
    command += ["--size", str(args.size), "--batch", str(args.batch), "--dir", args.dir]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"{model_name:7s} {variant:8s} {tool:12s} failed: {done.stderr.strip()[-300:]}")
        return
    out = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"{model_name:7s} {variant:8s} {tool:12s} {out['unit']:7.3f} {out['seconds']:9.2f} "
        f"{out['seconds'] / out['unit']:8.1f} {out['passes']:>8s} {out['peak_mib']:9.0f}  "
        f"{out['verdict']}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-gradcheck", action="store_true")
    parser.add_argument("--parts", default="cnn,resnet,gpt", help="comma list of models")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--gpt-steps", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/diag-bench-gradients")
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args)
        return
    # Other processes on a shared 2-core machine inflate every time: say how busy it was.
    print(f"load average before: {os.getloadavg()[0]:.2f}, {torch.get_num_threads()} threads")
    print(
        f"{'model':7s} {'variant':8s} {'tool':12s} {'F s':>7s} {'time s':>9s} {'x F':>8s} "
        f"{'passes':>8s} {'peak MiB':>9s}  verdict"
    )
    parts = args.parts.split(",")
    tools = ["diag"] + ([] if args.skip_gradcheck else ["gradcheck"])
    for model_name, its_tools in (("cnn", tools), ("resnet", ["diag"])):
        for variant in ("healthy", "broken") if model_name in parts else ():
            for tool in its_tools:
                row(model_name, variant, tool, args)
    if "gpt" in parts:
        prepare_gpt(args)
        for variant in ("healthy", "broken"):
            for tool in ("diag", "grads group"):
                row("gpt", variant, tool, args)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

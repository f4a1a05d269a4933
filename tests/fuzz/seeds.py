"""Build the seed corpus of every harness: small valid files of each format, from real data.

`python tests/fuzz/seeds.py OUT` writes OUT/<harness>/<seed>. The pytest replay uses
`seeds(name)` directly. Seeds stay small (a few KB) so libFuzzer's mutations stay fast.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "data" / "logs"
SEPARATOR = b"\x00\x00"  # fuzz_mlflow.SEPARATOR

Seeds = dict[str, bytes]


def _digits(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images[:n].astype(np.uint8), digits.target[:n].astype(np.int64)


def _tiny_model() -> object:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(72, 3)
    )


def tensorboard() -> Seeds:
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory() as tmp:
        writer = SummaryWriter(tmp)
        for step in range(4):
            writer.add_scalar("train/loss", 2.0 / (step + 1), step)
            writer.add_scalar("val/loss", 2.5 / (step + 1), step)
        writer.add_scalars("acc", {"train": 0.5, "val": 0.4}, 3)
        writer.close()
        raw = next(Path(tmp).glob("events.out.tfevents.*")).read_bytes()
    records, pos = [], 0
    while pos + 12 <= len(raw):
        (length,) = struct.unpack_from("<Q", raw, pos)
        records.append(raw[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4
    return {"raw": b"\x01" + raw, "framed": b"\x00" + b"\xfe\xfe".join(records)}


def csv_log() -> Seeds:
    lightning = next((DATA / "lightning").rglob("metrics.csv"))
    return {
        "keras": (DATA / "keras" / "training.csv").read_bytes()[:3000],
        "lightning": lightning.read_bytes()[:3000],
        "plain": b"step,train_loss,val_loss\n0,2.3,2.4\n1,1.1,1.3\n2,nan,inf\n3,0.5,\n",
        "tsv": b"epoch\tloss\tval_loss\n0\t2.3\t2.4\n1\t1.1\t1.3\n",
    }


def jsonl_log() -> Seeds:
    lines = [
        {"step": i, "train": {"loss": 2.0 / (i + 1)}, "val_loss": 2.2 / (i + 1), "epoch": i / 2}
        for i in range(6)
    ]
    return {"nested": "\n".join(json.dumps(line) for line in lines).encode()}


def trainer_state() -> Seeds:
    return {"hf": (DATA / "hf" / "trainer_state.json").read_bytes()[:4000]}


def mlflow() -> Seeds:
    run = next(p for p in (DATA / "mlflow" / "mlruns").glob("[0-9]*/*") if (p / "metrics").is_dir())
    parts = [
        (run.parent / "meta.yaml").read_bytes(),
        (run / "meta.yaml").read_bytes(),
        (run / "metrics" / "train_loss").read_bytes()[:600],
        (run / "metrics" / "val_loss").read_bytes()[:600],
        b"0.01",
        b"fuzz run",
    ]
    return {"store": b"\x00" + SEPARATOR.join(parts)}


WANDB_RUN = r"""
import sys
import wandb

run = wandb.init(mode="offline", dir=sys.argv[1], project="seed", name="seed", config={"lr": 0.1})
for step in range(6):
    wandb.log({"train/loss": 2.0 / (step + 1), "eval/loss": 2.5 / (step + 1), "epoch": step // 3})
wandb.log({"train/loss": float("nan"), "nested": {"a": 1}, "note": "text"})
run.finish()
"""


def wandb() -> Seeds:
    import os
    import subprocess

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import wandb_writer

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
        for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            env[var] = tmp
        subprocess.run([sys.executable, "-c", WANDB_RUN, tmp], check=True, env=env)
        raw = next(Path(tmp).glob("wandb/offline-run-*/run-*.wandb")).read_bytes()
    # fuzz_wandb.SEPARATOR between payloads
    return {"raw": b"\x01" + raw, "framed": b"\x00" + b"\xfe\xfe".join(wandb_writer.payloads(raw))}


def safetensors() -> Seeds:
    from safetensors.torch import save

    state = _tiny_model().state_dict()
    return {
        "plain": save(dict(state)),
        "metadata": save(dict(state), metadata={"global_step": "0", "format": "pt"}),
    }


def _torch_bytes(obj: object) -> bytes:
    import torch

    out = io.BytesIO()
    torch.save(obj, out)
    return out.getvalue()


def torch_zip() -> Seeds:
    import torch

    model = _tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    opt.step()
    lightning = {
        "epoch": 3,
        "global_step": 12,
        "state_dict": model.state_dict(),
        "optimizer_states": [opt.state_dict()],
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"monitor": "val_loss"}},
        "hyper_parameters": {"lr": 1e-3, "name": "tiny"},
    }
    return {"state_dict": _torch_bytes(model.state_dict()), "lightning": _torch_bytes(lightning)}


def _legacy_bytes(obj: object) -> bytes:
    import torch

    out = io.BytesIO()
    torch.save(obj, out, _use_new_zipfile_serialization=False)
    return out.getvalue()


def legacy_torch() -> Seeds:
    import torch

    model = _tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    opt.step()
    ids = [id(p) for p in model.parameters()]
    old_style = opt.state_dict()  # keyed by id(param), as torch before 1.x wrote it
    old_style["state"] = {ids[k]: v for k, v in old_style["state"].items()}
    old_style["param_groups"] = [
        dict(g, params=[ids[i] for i in g["params"]]) for g in old_style["param_groups"]
    ]
    base = torch.arange(12, dtype=torch.float32)
    lightning = {
        "epoch": 3,
        "global_step": 12,
        "state_dict": model.state_dict(),
        "optimizer_states": [old_style],
    }
    views = {"base": base, "t": base.view(3, 4).t(), "row": base.view(3, 4)[1], "s": base[2]}
    return {
        "state_dict": _legacy_bytes(model.state_dict()),
        "lightning": _legacy_bytes(lightning),
        "views": _legacy_bytes(views),
    }


def pickle() -> Seeds:
    import pickle as std

    value = {"a": [1, 2.5, None, True], "b": ("x", b"y"), "c": {1: frozenset({3})}}
    seeds = {f"protocol{p}": std.dumps(value, protocol=p) for p in (0, 2, 4, 5)}
    with zipfile.ZipFile(io.BytesIO(torch_zip()["lightning"])) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        seeds["torch"] = archive.read(name)
    return seeds


def onnx() -> Seeds:
    import torch

    out = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, still right here
        warnings.simplefilter("ignore")
        torch.onnx.export(_tiny_model(), (torch.randn(1, 1, 8, 8),), out, dynamo=False)
    return {"tiny": out.getvalue()}


def npz_split() -> Seeds:
    images, labels = _digits()
    plain, packed, single = io.BytesIO(), io.BytesIO(), io.BytesIO()
    np.savez(plain, x=images, y=labels, groups=labels % 4)
    np.savez_compressed(packed, images=images[:8], labels=labels[:8])
    np.save(single, images[:6].reshape(6, -1).astype(np.float32))
    return {
        "npz": b"\x00" + plain.getvalue(),
        "npz-leak": b"\x01" + plain.getvalue(),
        "compressed": b"\x00" + packed.getvalue(),
        "npy": b"\x02" + single.getvalue(),
    }


def csv_split() -> Seeds:
    images, labels = _digits(10)
    header = ",".join(["label", "group", *[f"pixel{i}" for i in range(64)]])
    rows = [
        ",".join([str(y), str(y % 3), *map(str, img.ravel())])
        for img, y in zip(images, labels, strict=True)
    ]
    table = "id,age,city,label\n1,34,Oslo,0\n2,51,Lima,1\n3,29,Oslo,0\n4,,Pune,1\n"
    return {
        "pixels": b"\x01" + "\n".join([header, *rows]).encode(),
        "table": b"\x00" + table.encode(),
    }


def image_split() -> Seeds:
    from PIL import Image

    images, _ = _digits(2)
    seeds = {}
    for fmt in ("PNG", "JPEG", "BMP", "GIF", "WEBP"):
        out = io.BytesIO()
        Image.fromarray(images[0] * 16).resize((16, 16)).save(out, format=fmt)
        seeds[fmt.lower()] = out.getvalue()
    return seeds


def batch() -> Seeds:
    import torch

    images, labels = _digits(4)
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(labels)
    return {
        "tuple": _torch_bytes((x, y)),
        "dict": _torch_bytes({"inputs": x, "targets": y}),
        "inputs-only": _torch_bytes(x),
    }


BUILDERS: dict[str, Callable[[], Seeds]] = {
    f.__name__: f
    for f in (
        tensorboard, csv_log, jsonl_log, trainer_state, mlflow, safetensors, torch_zip,
        legacy_torch, pickle, onnx, npz_split, csv_split, image_split, batch, wandb,
    )
}  # fmt: skip


def seeds(name: str) -> Seeds:
    return BUILDERS[name]()


# The split formats added in issue 13 keep their seed builders in their own file.
from seeds_splits import BUILDERS as _SPLIT_FORMAT_BUILDERS  # noqa: E402

BUILDERS.update(_SPLIT_FORMAT_BUILDERS)


def main(out: Path) -> None:
    for name, build in BUILDERS.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for seed, data in build().items():
            (folder / f"seed-{seed}").write_bytes(data)
        print(f"{name}: {len(list(folder.iterdir()))} inputs in {folder}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "corpus")

"""Seeds for the split-format harnesses (JSONL, WebDataset, `datasets` Arrow streams),
small valid files written by the real libraries from real content."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np

Seeds = dict[str, bytes]


def _docs(n: int = 6) -> list[str]:
    import textwrap

    return [f"{name}: {(getattr(textwrap, name).__doc__ or '')[:160]}" for name in
            ("dedent", "indent", "wrap", "fill", "shorten", "TextWrapper")][:n]  # fmt: skip


def jsonl_split() -> Seeds:
    docs = _docs()
    text = [{"text": d, "label": i % 2} for i, d in enumerate(docs)]
    chat = [
        {"id": i, "messages": [{"role": "user", "content": "Explain"},
                               {"role": "assistant", "content": [{"type": "text", "text": d}]}]}
        for i, d in enumerate(docs[:3])
    ]  # fmt: skip
    pairs = [{"prompt": "Doc:", "completion": d, "group": i // 2} for i, d in enumerate(docs)]
    lines = {name: "\n".join(json.dumps(r) for r in rows) + "\n"
             for name, rows in (("text", text), ("chat", chat), ("pairs", pairs))}  # fmt: skip
    return {name: b"\x01" + body.encode() for name, body in lines.items()}


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def webdataset_split() -> Seeds:
    import webdataset as wds
    from sklearn.datasets import load_digits

    digits = load_digits()
    seeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images.tar"
        with wds.TarWriter(str(images)) as sink:
            for i in range(3):
                image = (digits.images[i] * 15).astype(np.uint8)
                sink.write({"__key__": f"s{i}", "png": _png(image), "cls": int(digits.target[i])})
        seeds["images"] = b"\x01" + images.read_bytes()
        texts = Path(tmp) / "texts.tar"
        with wds.TarWriter(str(texts)) as sink:
            for i, doc in enumerate(_docs(3)):
                sink.write({"__key__": f"d{i}", "txt": doc, "json": {"label": i}})
        seeds["texts"] = b"\x00" + texts.read_bytes()
    for name in list(seeds):  # the end-of-archive padding is only zeros: keep seeds small
        seeds[name] = seeds[name].rstrip(b"\0") + bytes(1024)
    return seeds


def datasets_split() -> Seeds:
    import datasets
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [_png((digits.images[i] * 15).astype(np.uint8)) for i in range(3)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    tables = {
        "text": datasets.Dataset.from_dict({"text": _docs(), "label": [0, 1, 0, 1, 0, 1]}),
        "image": datasets.Dataset.from_dict(
            {"image": [{"bytes": b, "path": None} for b in images], "label": [0, 1, 2]},
            features=features,
        ),
    }
    seeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, table in tables.items():
            table.save_to_disk(Path(tmp) / name)
            seeds[name] = b"\x01" + (Path(tmp) / name / "data-00000-of-00001.arrow").read_bytes()
    return seeds


BUILDERS = {f.__name__: f for f in (jsonl_split, webdataset_split, datasets_split)}

"""Fuzz the --batch reader: a tensors-only torch.save file, read without running its pickle."""

from __future__ import annotations

from _common import fuzz, load_diag, scratch_file

load_diag()

from diag.loaders.probe_inputs import read_batch  # noqa: E402


def one_input(data: bytes) -> None:
    path = scratch_file("batch.pt", data)
    inputs, targets = read_batch(str(path))
    tensors = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
    for tensor in [*tensors, *([] if targets is None else [targets])]:
        tensor.float().sum()


if __name__ == "__main__":
    fuzz(one_input)

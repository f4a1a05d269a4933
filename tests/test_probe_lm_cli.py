"""Language models through the real `diag check`: a GPT factory with a (batch, tokens) batch
and no `--loss`, and `--model hf:DIR` with text batches encoded by the folder's tokenizer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from lm_probe_runs import LmRun, shared_run
from lm_support import docstring_texts

GPT_PY = textwrap.dedent(
    '''
    """A hand-written causal transformer: plain tensors in, (batch, tokens, vocab) logits out."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    VOCAB, WIDTH, LENGTH = 512, 32, 64


    class Block(nn.Module):
        def __init__(self, causal):
            super().__init__()
            self.causal = causal
            self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
            self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
            self.up, self.down = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, 2, -1).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, WIDTH))
            return x + self.down(F.relu(self.up(self.norm2(x))))


    class GPT(nn.Module):
        def __init__(self, causal=True):
            super().__init__()
            self.tokens, self.positions = nn.Embedding(VOCAB, WIDTH), nn.Embedding(LENGTH, WIDTH)
            self.blocks = nn.ModuleList([Block(causal), Block(causal)])
            self.head = nn.Linear(WIDTH, VOCAB)

        def forward(self, ids):
            x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1]))
            for block in self.blocks:
                x = block(x)
            return self.head(x)


    def build():
        return GPT()


    def build_without_mask():
        return GPT(causal=False)
    '''
)


def diag(*args: str) -> subprocess.CompletedProcess:
    # One intra-op thread: the two cores are shared, and two threads each thrash.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "diag", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def loud(report: dict) -> list[tuple[str, str]]:
    return [
        (f["rule"], f["message"])
        for f in report["findings"]
        if f["severity"] in ("warning", "error")
    ]


@pytest.fixture(scope="module")
def gpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hand-written GPT's factory, its initial weights and a (4, 64) batch of ids."""
    root = tmp_path_factory.mktemp("gpt")
    (root / "gpt.py").write_text(GPT_PY)
    sys.path.insert(0, str(root))
    try:
        import gpt as module  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("gpt", None)
    torch.manual_seed(0)
    state = module.build().state_dict()
    torch.save(state, root / "gpt.pt")
    # A ReLU MLP pushed below zero everywhere: its units never fire on any token.
    torch.save({**state, "blocks.1.up.bias": torch.full((128,), -100.0)}, root / "dead.pt")
    torch.save(torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(0)),
               root / "batch.pt")  # fmt: skip
    return root


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> LmRun:
    """Seed 0's trained GPT-2, shared with test_probe_lm.py when both run."""
    return shared_run(tmp_path_factory.getbasetemp(), 0)


def test_gpt_factory_with_token_batch_and_no_loss(gpt: Path) -> None:
    proc = diag(
        "check", str(gpt / "gpt.pt"), "--model", f"{gpt / 'gpt.py'}:build",
        "--batch", str(gpt / "batch.pt"), "--format", "json", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert not loud(report) and not report["errors"], report
    (model,) = [i for i in report["inputs"] if i["role"] == "model"]
    assert model["loss"] == "cross_entropy (next token)"
    ran = set(report["metadata"]["timings"])
    assert {"gradient-mismatch", "batch-mixing", "overfit-one-batch", "dead-units"} <= ran


def test_dead_mlp_units_in_a_gpt(gpt: Path) -> None:
    proc = diag(
        "check", str(gpt / "dead.pt"), "--model", f"{gpt / 'gpt.py'}:build",
        "--batch", str(gpt / "batch.pt"), "--format", "json", "--quiet", "--select", "dead-units",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    (finding,) = json.loads(proc.stdout)["findings"]
    assert finding["location"]["object"] == "blocks.1.up.weight"
    assert finding["evidence"]["dead"] == 128 and finding["evidence"]["observations"] == 4 * 64


def test_gpt_factory_without_causal_mask_is_caught(gpt: Path) -> None:
    proc = diag(
        "check", str(gpt / "gpt.pt"), "--model", f"{gpt / 'gpt.py'}:build_without_mask",
        "--batch", str(gpt / "batch.pt"), "--format", "json", "--quiet", "--select",
        "batch-mixing",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    (finding,) = json.loads(proc.stdout)["findings"]
    assert finding["location"]["object"] == "sequence positions"
    assert finding["evidence"]["via"] == "embedding"


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_hf_folder_with_text_batches(hf_run: LmRun, tmp_path: Path) -> None:
    texts = docstring_texts(20_000)
    jsonl = write_jsonl(
        tmp_path / "text.jsonl",
        [{"text": texts[0]}, {"prompt": texts[1][:80], "completion": texts[1][80:300]}]
        + [{"messages": [{"role": "user", "content": t[:60]}, {"role": "assistant",
            "content": t[60:200]}]} for t in texts[2:4]],
    )  # fmt: skip
    txt = tmp_path / "text.txt"
    txt.write_text("\n\n".join(texts[4:40]))
    for batch, sequences in ((jsonl, 4), (txt, 8)):
        proc = diag(
            "check", "--model", f"hf:{hf_run.hf_folder}", "--batch", str(batch),
            "--format", "json", "--quiet",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert not loud(report) and not report["errors"], report
        (model,) = [i for i in report["inputs"] if i["role"] == "model"]
        assert model["loss"] == "cross_entropy (next token, labels shifted)"
        (batch_entry,) = [i for i in report["inputs"] if i["role"] == "batch"]
        assert batch_entry["samples"] == sequences


def test_hf_weights_are_read_by_diag_not_torch_load(
    hf_run: LmRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pytorch_model.bin folder (a pickle) loads through diag's restricted reader."""
    from diag.loaders.probe_inputs import open_probe

    folder = tmp_path / "bin"
    shutil.copytree(hf_run.hf_folder, folder)
    (folder / "model.safetensors").unlink()
    state = torch.load(hf_run.checkpoint, weights_only=True)
    torch.save(state, folder / "pytorch_model.bin")

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", refuse)
    probe = open_probe(f"hf:{folder}", str(hf_run.batch))
    assert probe.loss_name == "cross_entropy (next token)" and probe.causal
    for name, tensor in probe.model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_hf_refusals_are_one_line(hf_run: LmRun, tmp_path: Path) -> None:
    from diag.errors import DiagError
    from diag.loaders.probe_inputs import open_probe

    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(hf_run.hf_folder / name, no_tokenizer / name)
    custom = tmp_path / "custom"
    shutil.copytree(hf_run.hf_folder, custom)
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (custom / "config.json").write_text(json.dumps(config))
    text = tmp_path / "text.txt"
    text.write_text("Return the number of items in a container.")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{not json\n')
    cases = (
        (no_tokenizer, text, "needs a tokenizer"),
        (custom, text, "custom model code (auto_map)"),
        (hf_run.hf_folder, broken, "line 2: not JSON"),
        (tmp_path, text, "no config.json"),
    )
    for folder, batch, expected in cases:
        with pytest.raises(DiagError, match=re.escape(expected)) as caught:
            open_probe(f"hf:{folder}", str(batch))
        assert "\n" not in str(caught.value)
    with pytest.raises(DiagError, match="a text batch needs a tokenizer: use --model hf:DIR"):
        open_probe(f"{hf_run.factories}:healthy", str(text))
    # and through the CLI: exit 2, one line on stderr, no traceback
    proc = diag("check", "--model", f"hf:{custom}", "--batch", str(text))
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.startswith("diag: error: ") and "auto_map" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_trainer_checkpoint_folder(hf_run: LmRun, tmp_path: Path) -> None:
    """`hf:out/checkpoint-N` as Trainer writes it (optimizer, scheduler, state beside it)."""
    from transformers import AutoTokenizer, GPT2LMHeadModel, Trainer, TrainingArguments

    from diag.loaders.probe_inputs import open_probe

    tokenizer = AutoTokenizer.from_pretrained(hf_run.hf_folder, local_files_only=True)
    model = GPT2LMHeadModel.from_pretrained(hf_run.hf_folder, local_files_only=True)
    rows = torch.load(hf_run.batch, weights_only=True)
    examples = [{"input_ids": row, "labels": row} for row in rows]
    arguments = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=2, save_steps=2, per_device_train_batch_size=2,
        report_to=[], use_cpu=True, learning_rate=1e-3, logging_steps=1,
    )  # fmt: skip
    Trainer(model=model, args=arguments, train_dataset=examples, processing_class=tokenizer).train()
    folder = tmp_path / "out" / "checkpoint-2"
    batch = write_jsonl(tmp_path / "batch.jsonl", [{"text": t} for t in docstring_texts(3_000)])
    probe = open_probe(f"hf:{folder}", str(batch))
    assert probe.causal and probe.loss_name == "cross_entropy (next token, labels shifted)"
    trained = model.state_dict()
    for name, tensor in probe.model.state_dict().items():
        assert torch.equal(tensor, trained[name].float()), name
    assert any("sequences of up to" in note for note in probe.notes)


def test_text_batch_layout(tmp_path: Path) -> None:
    """Prompt tokens and padding carry no loss; completions do; ids stay under the limit."""
    from lm_support import build_tokenizer

    from diag.loaders.text_batch import IGNORE, read_text_batch

    tokenizer = build_tokenizer(tmp_path / "tokenizer")
    prompt, completion = "Return the sum of", " the items in a list."
    batch = write_jsonl(
        tmp_path / "batch.jsonl",
        [{"prompt": prompt, "completion": completion}, {"text": "x" * 500}],
    )
    notes: list[str] = []
    inputs, labels = read_text_batch(str(batch), tokenizer, 16, notes)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape == labels.shape == (2, 16)  # the long text cut at the model's limit
    n_prompt = len(tokenizer(prompt)["input_ids"])
    n_all = n_prompt + len(tokenizer(completion, add_special_tokens=False)["input_ids"])
    assert (labels[0, :n_prompt] == IGNORE).all()
    assert torch.equal(labels[0, n_prompt:n_all], ids[0, n_prompt:n_all])
    assert (labels[0, n_all:] == IGNORE).all() and (mask[0, n_all:] == 0).all()
    assert mask[1].all() and torch.equal(labels[1], ids[1])
    assert notes == [
        f"{batch}: 2 sequences of up to 16 tokens (prompt+completion and text), encoded with "
        "the model folder's tokenizer (at most 8 x 16)"
    ]

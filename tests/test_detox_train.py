"""Detoxifier trainer: exact prompt masking, loss goes down, adapter round-trip, resume (tiny model)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mllm_protector.data.detox import DetoxRecord, read_detox_jsonl
from mllm_protector.detoxifier import LMDetoxifier, chat_prompt_ids
from mllm_protector.train.detoxifier import (
    DetoxCollator,
    DetoxTrainingArguments,
    encode_record,
    encode_records,
    render_model_card,
    save_detoxifier,
    target_loss,
    train_detoxifier,
)

DETOX = Path(__file__).parent / "fixtures" / "detox"


def _load_tiny_builder():
    spec = importlib.util.spec_from_file_location("tiny_model", DETOX / "tiny_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.build_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return _load_tiny_builder()(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def records() -> list[DetoxRecord]:
    return read_detox_jsonl(DETOX / "detox.jsonl")


def _args(tmp_path: Path, model: Path, **overrides) -> DetoxTrainingArguments:
    values = dict(
        output_dir=str(tmp_path / "checkpoints"), model=str(model), lora_r=4, lora_alpha=8, lora_dropout=0.0,
        max_length=256, per_device_train_batch_size=4, max_steps=4, learning_rate=1e-2, warmup_steps=0,
        lr_scheduler_type="constant", logging_steps=1, seed=0, use_cpu=True, disable_tqdm=True,
    )
    values.update(overrides)
    return DetoxTrainingArguments(**values)


def test_prompt_labels_are_masked_exactly(tiny_model, records):
    detox = LMDetoxifier(model=str(tiny_model), adapter=False)
    tokenizer = detox.tokenizer
    for record in records[:5]:
        row = encode_record(tokenizer, record, max_length=512)
        prompt = detox.prompt_ids(record.query, record.harmful, record.category)  # what inference feeds
        assert prompt == chat_prompt_ids(tokenizer, record.query, record.harmful, record.category)
        n = len(prompt)
        assert row["input_ids"][:n] == prompt
        assert row["labels"][:n] == [-100] * n
        target = tokenizer(record.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert row["labels"][n:] == target == row["input_ids"][n:]
    # a prompt that leaves < 16 tokens of room is dropped; a long target is cut without EOS
    assert encode_record(tokenizer, records[0], max_length=20) is None
    n = len(chat_prompt_ids(tokenizer, records[0].query, records[0].harmful, records[0].category))
    cut = encode_record(tokenizer, records[0], max_length=n + 16)
    assert len(cut["input_ids"]) == n + 16 and cut["labels"][-1] != tokenizer.eos_token_id


def test_collator_pads_labels_with_ignore_index(tiny_model, records):
    from mllm_protector.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    rows = encode_records(tokenizer, records[:3], 512)
    batch = DetoxCollator(tokenizer.pad_token_id)(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    assert batch["input_ids"].shape == (3, max(lengths))
    for i, n in enumerate(lengths):
        assert batch["attention_mask"][i].sum() == n
        assert (batch["labels"][i, n:] == -100).all()
    assert batch["index"].tolist() == [0, 1, 2]


def test_target_loss_ignores_prompt_positions():
    logits = torch.randn(1, 5, 11)
    labels = torch.tensor([[-100, -100, 3, 4, -100]])
    expected = torch.nn.functional.cross_entropy(logits[0, 1:3], torch.tensor([3, 4]))
    assert torch.allclose(target_loss(logits, labels), expected)
    assert target_loss(logits, torch.full((1, 5), -100)) == 0


def test_few_steps_lower_the_loss_full_fine_tune(tmp_path, tiny_model, records):
    args = _args(tmp_path, tiny_model, lora=False, max_steps=8, learning_rate=1e-2)
    _, _, report = train_detoxifier(args, records, records[:4])
    losses = [h["loss"] for h in report["loss_history"]]
    assert len(losses) == 8
    assert losses[-1] < losses[0] * 0.9
    assert report["validation_loss"] < report["validation_loss_before"]


def test_few_steps_lower_the_loss_lora(tmp_path, tiny_model, records):
    args = _args(tmp_path, tiny_model, lora_r=8, lora_alpha=16, max_steps=8, learning_rate=2e-2)
    model, _, report = train_detoxifier(args, records, records[:4])
    assert model.peft_config["default"].r == 8  # a LoRA model
    losses = [h["loss"] for h in report["loss_history"]]
    # a 32-wide random model moves little through rank-8 adapters, but it must move down
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.03
    assert report["validation_loss"] < report["validation_loss_before"]


def test_adapter_round_trip_gives_identical_greedy_output(tmp_path, tiny_model, records):
    args = _args(tmp_path, tiny_model, max_steps=3)
    model, tokenizer, report = train_detoxifier(args, records)
    out = save_detoxifier(model, tokenizer, tmp_path / "adapter", report, dtype="float16")
    assert (out / "adapter_config.json").is_file() and (out / "README.md").is_file()
    from safetensors.torch import load_file

    assert all(t.dtype == torch.float16 for t in load_file(str(out / "adapter_model.safetensors")).values())

    query, harmful = records[0].query, records[0].harmful
    ids = torch.tensor([chat_prompt_ids(tokenizer, query, harmful, None)])
    model.eval()
    with torch.no_grad():
        expected = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                  do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected_text = tokenizer.decode(expected[0, ids.shape[1]:], skip_special_tokens=True).strip()
    loaded = LMDetoxifier(model=str(tiny_model), adapter=out, max_new_tokens=6, device="cpu")
    assert loaded.adapter == str(out)
    assert loaded.rewrite(query, harmful) == expected_text
    base = LMDetoxifier(model=str(tiny_model), adapter=False, max_new_tokens=6, device="cpu")
    assert base.adapter is None


def test_model_card_lists_data_and_licenses(tmp_path):
    report = {
        "global_step": 10, "train_rows": 8, "world_size": 1, "wall_time_s": 60,
        "loss_history": [{"step": 1, "loss": 3.0}, {"step": 10, "loss": 1.5}],
        "validation_loss_before": 3.1, "validation_loss": 1.9,
        "data": {"train": {"by_source_category": {"jailbreakbench": {"harm": 5}, "mmsb_gemini": {"advice": 3}}}},
        "arguments": {"lora_r": 8}, "command": "mllm-protector train detoxifier -o x",
    }
    (tmp_path / "training_report.json").write_text(json.dumps(report))
    text = render_model_card(tmp_path)
    assert "| jailbreakbench | 5 | 0 | 0 | 5 |" in text and "| **all** | 5 | 3 | 0 | 8 |" in text
    assert "CC BY-NC 4.0" in text and "Non-commercial" in text
    assert "3.000 (step 1) → 1.500 (step 10)" in text
    assert "Not measured yet" in text
    (tmp_path / "detox_quality.json").write_text(json.dumps({"markdown": "| metric | value |"}))
    assert "| metric | value |" in render_model_card(tmp_path)


@pytest.mark.slow
def test_cli_checkpoint_and_resume(tmp_path, tiny_model):
    out = tmp_path / "run"
    base = [sys.executable, "-m", "mllm_protector.cli", "train", "detoxifier", "-o", str(out), "--model", str(tiny_model),
            "--jsonl", str(DETOX / "detox.jsonl"), "--batch-size", "2", "--lora-r", "4", "--save-steps", "2",
            "--max-length", "256", "--val-fraction", "0", "--logging-steps", "1"]
    first = subprocess.run(base + ["--max-steps", "2"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    second = subprocess.run(base + ["--max-steps", "4", "--resume"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    report = json.loads((out / "training_report.json").read_text())
    assert report["global_step"] == 4
    # resumed: the Trainer's log history carries the first run's steps, and only steps 3-4 ran now
    assert [h["step"] for h in report["loss_history"]][-2:] == [3, 4]
    assert (out / "checkpoints" / "checkpoint-4").is_dir() and not (out / "checkpoints" / "checkpoint-2").exists()
    assert (out / "adapter_model.safetensors").is_file()

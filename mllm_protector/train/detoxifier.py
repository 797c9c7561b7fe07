"""Detoxifier training: causal-LM fine-tuning on (prompt → safe target) with the loss on target tokens.

The prompt is exactly what `LMDetoxifier` feeds at inference (`detoxifier.chat_prompt_ids`); its
labels are -100, so only the rewrite is learned, as in the original MLLM-Protector detoxifier. LoRA via
peft (rank and target modules configurable) or a full fine-tune, on any HF causal LM with a chat
template. A thin `transformers.Trainer` subclass (TRL style), so `accelerate launch` (DDP, DeepSpeed
ZeRO) scales it out unchanged and `resume_from_checkpoint` works.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..data.detox import DetoxRecord
from ..detoxifier import chat_prompt_ids
from ..errors import ProtectorError
from ..models import load_model, load_tokenizer

logger = logging.getLogger(__name__)

#: LoRA targets of LLaMA-style decoders (SmolLM2, LLaMA, Mistral, Qwen): attention + MLP projections.
DEFAULT_LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
CARD_NAME = "README.md"
REPORT_NAME = "training_report.json"
QUALITY_NAME = "detox_quality.json"


@dataclass
class DetoxTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the detoxifier's own knobs (base model, LoRA, sequence length)."""

    model: str = field(default="smollm2-135m-instruct", metadata={"help": "alias, local path or hub id"})
    lora: bool = field(default=True, metadata={"help": "LoRA adapter (small to ship) instead of full fine-tune"})
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: str = field(default=DEFAULT_LORA_TARGETS, metadata={"help": "comma-separated module names"})
    max_length: int = field(default=352, metadata={"help": "prompt + target tokens; longer targets are cut"})
    save_dtype: str = field(default="float16", metadata={"help": "dtype of the saved adapter: float16 | bfloat16 | float32"})
    log_seen_examples: bool = field(
        default=False, metadata={"help": "write the example indices each rank trained on (data-parallel check)"}
    )
    max_minutes: float = field(default=0.0, metadata={"help": "stop after this much wall time (0 = no limit)"})
    learning_rate: float = 2e-4
    per_device_train_batch_size: int = 4
    num_train_epochs: float = 1.0
    warmup_steps: int = 10
    lr_scheduler_type: str = "cosine"
    logging_steps: int = 10
    save_strategy: str = "no"
    report_to: Any = "none"
    remove_unused_columns: bool = False


def encode_record(tokenizer: Any, record: DetoxRecord, max_length: int) -> dict[str, list[int]] | None:
    """Prompt + target ids with labels -100 on every prompt token; None when the prompt leaves no room.

    The target ends with the EOS token (so the model learns to stop); a target that does not fit is cut
    (and then has no EOS).
    """
    prompt = chat_prompt_ids(tokenizer, record.query, record.harmful, record.category)
    target = tokenizer(record.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    room = max_length - len(prompt)
    if room < 16:
        return None
    target = target[:room]
    return {"input_ids": prompt + target, "labels": [-100] * len(prompt) + target}


def encode_records(tokenizer: Any, records: Sequence[DetoxRecord], max_length: int) -> list[dict[str, Any]]:
    """Encoded training rows (each keeps its record `index`); too-long prompts are dropped and logged."""
    rows, dropped, cut = [], 0, 0
    for index, record in enumerate(records):
        row = encode_record(tokenizer, record, max_length)
        if row is None:
            dropped += 1
            continue
        cut += row["input_ids"][-1] != tokenizer.eos_token_id
        rows.append({**row, "index": index})
    if dropped or cut:
        logger.info("encoding: %d records dropped (prompt too long), %d targets cut at %d tokens", dropped, cut, max_length)
    return rows


@dataclass
class DetoxCollator:
    """Right-pads ids with the pad token and labels with -100; passes the record indices along."""

    pad_token_id: int

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        input_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[i, :n] = torch.tensor(item["input_ids"])
            labels[i, :n] = torch.tensor(item["labels"])
            attention_mask[i, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if all("index" in item for item in items):
            batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
        return batch


def target_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose label is not -100 (the target tokens)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    if not (shift_labels != -100).any():
        return shift_logits.sum() * 0.0
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100)


class DetoxTrainer(Trainer):
    """`Trainer` whose loss is the mean cross-entropy on target tokens only (prompt labels are -100)."""

    # compute_loss returns a per-micro-batch mean; the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, log_seen_examples: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.seen_examples: list[int] | None = [] if log_seen_examples else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        index = inputs.pop("index", None)
        if self.seen_examples is not None and index is not None and model.training:
            self.seen_examples.extend(int(i) for i in index)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        loss = target_loss(outputs.logits, labels)
        return (loss, outputs) if return_outputs else loss


class _TimeLogger(TrainerCallback):
    """Adds elapsed wall time to the Trainer's logs (and the Python log, for `runs/*.log`); stops
    training (saving a checkpoint when checkpointing is on) once `max_minutes` have passed."""

    def __init__(self, max_minutes: float = 0.0) -> None:
        self.start = time.monotonic()
        self.max_minutes = max_minutes

    def on_step_end(self, args, state, control, **kwargs):
        if self.max_minutes > 0 and time.monotonic() - self.start > 60 * self.max_minutes:
            logger.warning("time budget of %.1f min reached at step %d: stopping", self.max_minutes, state.global_step)
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            logs["elapsed_s"] = round(time.monotonic() - self.start, 1)
            if state.is_world_process_zero:
                logger.info("step %d/%d %s", state.global_step, state.max_steps, json.dumps(logs))


def build_model(args: DetoxTrainingArguments) -> tuple[Any, Any]:
    """Base causal LM (+ fresh LoRA adapter) and its tokenizer."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(args.model)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ProtectorError(f"model '{args.model}' has no chat template: the detoxifier prompt is a chat; use an instruct model")
    import transformers

    dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    dtype_arg: dict[str, Any] = {dtype_key: torch.float32}
    model = load_model(args.model, AutoModelForCausalLM, **dtype_arg)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if args.lora:
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=[t.strip() for t in args.lora_targets.split(",") if t.strip()],
        )
        model = get_peft_model(model, config)
    return model, tokenizer


def train_detoxifier(
    args: DetoxTrainingArguments,
    train: Sequence[DetoxRecord],
    validation: Sequence[DetoxRecord] = (),
    data_summary: dict[str, Any] | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Fine-tune a detoxifier; returns (model, tokenizer, report with loss history and validation loss)."""
    start = time.monotonic()
    model, tokenizer = build_model(args)
    rows = encode_records(tokenizer, train, args.max_length)
    val_rows = encode_records(tokenizer, validation, args.max_length)
    if not rows:
        raise ProtectorError("no detoxifier training records fit max_length: raise --max-length or shorten the data")
    logger.info("training on %d rows (%d validation)", len(rows), len(val_rows))
    trainer = DetoxTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=DetoxCollator(tokenizer.pad_token_id),
        callbacks=[_TimeLogger(args.max_minutes)],
        log_seen_examples=args.log_seen_examples,
    )
    val_before = _validation_loss(trainer, val_rows) if val_rows else None
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    if trainer.seen_examples is not None:
        assert args.output_dir is not None, "TrainingArguments.__post_init__ sets a default output_dir"
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        seen_path = output_dir / f"seen_examples_rank{args.process_index}.json"
        seen_path.write_text(json.dumps(sorted(trainer.seen_examples)))
    history = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
    report: dict[str, Any] = {
        "train_loss": result.training_loss,
        "global_step": trainer.state.global_step,
        "loss_history": history,
        "train_rows": len(rows),
        "validation_rows": len(val_rows),
        "wall_time_s": round(time.monotonic() - start, 1),
        "world_size": args.world_size,
        "data": data_summary or {},
        "arguments": {k: v for k, v in asdict(args).items() if k in _CARD_ARGS},
    }
    if val_rows:
        report["validation_loss_before"] = val_before
        report["validation_loss"] = _validation_loss(trainer, val_rows)
    return trainer.model, tokenizer, report


_CARD_ARGS = {
    "model", "lora", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "max_length", "learning_rate",
    "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps", "seed",
    "warmup_steps", "lr_scheduler_type", "save_dtype",
}


def _validation_loss(trainer: DetoxTrainer, rows: list[dict[str, Any]], batch_size: int = 8, limit: int = 64) -> float:
    """Token-weighted mean target loss on the first `limit` validation rows (no gradient)."""
    rows = rows[:limit]
    model, collate = trainer.model, trainer.data_collator
    assert model is not None and isinstance(collate, DetoxCollator), "train_detoxifier builds the trainer with both"
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start : start + batch_size])
            batch = {k: v.to(trainer.args.device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(target_loss(logits, batch["labels"])) * n
            count += n
    model.train(was_training)
    return total / max(count, 1)


def save_detoxifier(model: Any, tokenizer: Any, output_dir: str | Path, report: dict[str, Any], dtype: str = "float16") -> Path:
    """Save the LoRA adapter (weights rounded to `dtype`, also in memory, so what is shipped is what was
    evaluated) or the full model + tokenizer, the training report, and a model card."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    if hasattr(model, "peft_config"):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.copy_(param.to(torch_dtype).to(param.dtype))
        model.save_pretrained(output_dir, safe_serialization=True)
        _cast_safetensors(output_dir / "adapter_model.safetensors", torch_dtype)
        portable_base_name(output_dir, report.get("arguments", {}).get("model"))
    else:
        model.save_pretrained(output_dir, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)
    (output_dir / REPORT_NAME).write_text(json.dumps(report, indent=2, default=str) + "\n")
    render_model_card(output_dir)
    return output_dir


def portable_base_name(folder: str | Path, model: str | None) -> None:
    """Write the base model's hub id (not this machine's cache path) into adapter_config.json when the
    base was a bundled alias such as "smollm2-135m-instruct"."""
    from ..models import ALIASES

    path = Path(folder) / "adapter_config.json"
    if model in ALIASES and path.is_file():
        config = json.loads(path.read_text())
        config["base_model_name_or_path"] = ALIASES[model].hub_id
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _cast_safetensors(path: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


# ---------------------------------------------------------------- model card

_LICENSES = """\
| source | license |
|---|---|
| MM-SafetyBench questions + Gemini-2.0-flash answers (KeyJayY/MIO-Project) | questions CC BY-NC 4.0; answers generated with the Gemini API (Google terms); research only |
| JailbreakBench behaviors + attack artifacts | MIT |
| PKU-SafeRLHF (Alpaca-7B test sample) | CC BY-NC 4.0 |
| Safety-Tuned LLaMAs safety-only data | CC BY-NC 4.0 |
| VLGuard responses (GPT-4V) | no license stated upstream; check the HF card before redistribution |
| FigStep SafeBench + Qwen2.5-VL answers (harmful side of matched pairs) | MIT (FigStep); answers under the Qwen license |
| SmolLM2-135M-Instruct (base model) | Apache-2.0 |

**Non-commercial.** Several training sources are CC BY-NC 4.0 (and the Gemini answers are research-only), so
this adapter may be used for research and other non-commercial purposes only. Retrain with
`mllm-protector train detoxifier --sources ...` on commercially licensed data for other uses.
"""


def _table(rows: dict[str, dict[str, int]], columns: list[str]) -> str:
    lines = ["| source | " + " | ".join(columns) + " | total |", "|---|" + "---|" * (len(columns) + 1)]
    for source, counts in rows.items():
        cells = [str(counts.get(c, 0)) for c in columns]
        lines.append(f"| {source} | " + " | ".join(cells) + f" | {sum(counts.values())} |")
    totals = [str(sum(r.get(c, 0) for r in rows.values())) for c in columns]
    lines.append("| **all** | " + " | ".join(totals) + f" | {sum(sum(r.values()) for r in rows.values())} |")
    return "\n".join(lines)


def render_model_card(folder: str | Path) -> str:
    """Write README.md for a saved detoxifier from its training_report.json (+ detox_quality.json)."""
    folder = Path(folder)
    report = json.loads((folder / REPORT_NAME).read_text())
    quality_path = folder / QUALITY_NAME
    quality = json.loads(quality_path.read_text()) if quality_path.is_file() else None
    data = report.get("data", {})
    arguments = report.get("arguments", {})
    history = report.get("loss_history", [])
    columns = ["harm", "advice", "political"]
    parts = [
        "---\nlibrary_name: peft\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\nlicense: cc-by-nc-4.0\n"
        "tags: [safety, detoxification, mllm-protector, lora]\n---\n",
        "# mllm-protector default detoxifier (LoRA on SmolLM2-135M-Instruct)\n",
        "Rewrites a harmful answer into a harmless one that still addresses the question (MLLM-Protector's "
        "response detoxifier). Loaded automatically by `mllm_protector.LMDetoxifier()` and so by "
        "`mllm-protector protect`. The prompt (system text, `Question:`/`Answer to rewrite:`/`Rule:` and the "
        "per-category rule) is `mllm_protector.detoxifier.build_messages`, shared by training and inference.\n",
        "**Content warning / intended use:** trained on harmful questions and answers in order to rewrite "
        "them; use it behind a harm detector (the `Protector` re-checks every rewrite and falls back to a "
        "fixed refusal). Greedy decoding; 135M parameters: rewrites are short and generic, not expert answers.\n",
        "## Training data\n",
        "Records (query, harmful answer, target safe answer, category) built by "
        "`mllm_protector.data.detox.build_detox_dataset` from the shared data folder, split by query "
        "(no query in both train and validation). Train split (after the `--max-per-source` caps of the "
        "command below):\n",
    ]
    if data.get("train"):
        parts.append(_table(data["train"]["by_source_category"], columns) + "\n")
    if data.get("validation"):
        parts.append("Validation split (held out, also the pool for the quality benchmark):\n")
        parts.append(_table(data["validation"]["by_source_category"], columns) + "\n")
    parts.append(
        "Sources: `mmsb_gemini` = MM-SafetyBench questions with both a safe and an unsafe Gemini answer "
        "(targets: text-only variants, disclaimers for legal/financial advice); `jailbreakbench` = "
        "jailbroken vs refused answers to the same JBB goal; `pku_saferlhf` = prompts with exactly one safe "
        "answer; `matched` = Safety-Tuned LLaMAs / VLGuard safe replies paired with a harmful answer to a "
        "similar query (MiniLM cosine ≥ 0.6). Categories are guidance keys: harm (decline + redirect), "
        "advice (general info + no-qualification disclaimer), political (decline to engage).\n"
    )
    parts.append("## Licenses of the training data\n\n" + _LICENSES)
    parts.append("## Training\n")
    if report.get("command"):
        parts.append(f"```\n{report['command']}\n```\n")
    args_line = ", ".join(f"{k}={v}" for k, v in sorted(arguments.items()))
    parts.append(f"Arguments: {args_line}.\n")
    if history:
        parts.append(
            f"{report.get('global_step')} optimizer steps on {report.get('train_rows')} rows "
            f"(world size {report.get('world_size', 1)}), wall time {report.get('wall_time_s', 0) / 60:.1f} min. "
            f"Target-token loss: {history[0]['loss']:.3f} (step {history[0]['step']}) → "
            f"{history[-1]['loss']:.3f} (step {history[-1]['step']}).\n"
        )
    if "validation_loss" in report:
        parts.append(
            f"Validation target loss: {report['validation_loss_before']:.3f} before training → "
            f"{report['validation_loss']:.3f} after.\n"
        )
    parts.append("## Quality (held-out harmful answers)\n")
    if quality:
        parts.append(quality.get("markdown", "") + "\n")
    else:
        parts.append("Not measured yet: run `python benchmarks/detox_quality.py`.\n")
    text = "\n".join(parts)
    (folder / CARD_NAME).write_text(text)
    return text

"""Write a shipped detector's model card and its docs/results fragment from its saved config.

The numbers come from `detector_config.json` (validation metrics computed by the trainer) and
`training_report.json`; nothing is typed by hand. Usage:
    python benchmarks/detector_card.py mllm_protector/pretrained/detector-default --name default
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from mllm_protector.config import data_dir

ROOT = Path(__file__).resolve().parents[1]
BENIGN = ("vicuna80", "llava_coco", "vlguard")
LICENSES = {
    "mmsb_gemini": "MM-SafetyBench questions CC BY-NC 4.0; Gemini answers (Google terms); research only",
    "figstep_qwen": "FigStep MIT; Qwen2.5-VL answers (Qwen license)",
    "jailbreakbench": "MIT (JBB behaviors and artifacts)",
    "pku_saferlhf": "CC BY-NC 4.0",
    "hh_rlhf": "MIT",
    "safety_tuned_llamas": "CC BY-NC 4.0",
    "vlguard": "no license stated upstream (research use)",
    "vicuna80": "Apache-2.0 (MLLM-Protector repo); model answers under their providers' terms",
    "llava_coco": "LLaVA Apache-2.0; GPT-4 answers under OpenAI terms",
    "llava_wild": "LLaVA Apache-2.0; GPT-4 answers under OpenAI terms",
}


def fmt(value: float | int | None) -> str:
    """Three decimals for rates, plain integers for counts, n/a for missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def benign_fpr(by_source: dict[str, dict]) -> tuple[float, int]:
    """False-positive rate pooled over the benign-answer sources present in validation."""
    fp = sum(by_source[s]["fp"] for s in BENIGN if s in by_source)
    n = sum(by_source[s]["fp"] + by_source[s]["tn"] for s in BENIGN if s in by_source)
    return (fp / n if n else math.nan), n


def metrics_table(metrics: dict) -> str:
    """Overall + per-source validation table in Markdown."""
    cols = ["n", "harmful", "auroc", "auprc", "f1", "accuracy", "precision", "recall", "fpr", "fpr_at_95_recall"]
    rows = [("**all**", metrics["overall"])] + sorted(metrics["by_source"].items())
    lines = ["| source | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(fmt(m.get(c)) for c in cols) + " |" for name, m in rows]
    return "\n".join(lines)


def _schedule(stage: dict) -> str:
    """How long a training stage ran: its step count when capped by --max-steps, else its epochs."""
    args = stage.get("arguments", {})
    steps = args.get("max_steps", -1)
    return f"{steps} steps" if steps and steps > 0 else f"{args.get('num_train_epochs', '?')} epoch(s)"


def _loso_line(name: str) -> str:
    """The detector's row of the leave-one-source-out comparison (docs/results/detector_loso.json), if present."""
    path = ROOT / "docs" / "results" / "detector_loso.json"
    row = json.loads(path.read_text())["results"].get(f"baseline: {name}") if path.is_file() else None
    if not row:
        return ""
    fams = ", ".join(f"{f} {fmt(m['auroc'])}" for f, m in sorted(row["by_family"].items()) if not math.isnan(m["auroc"]))
    return (f"Scored on the leave-one-source-out corpus (`benchmarks/detector_loso.py`; families outside its training "
            f"data are unseen, the rest in-distribution): mean AUROC {fmt(row['loso_mean_auroc'])}, worst "
            f"{fmt(row['loso_worst_auroc'])} ({row['loso_worst_family']}); per family: {fams}.\n\n")


def _category_check(check: dict | None) -> str:
    """One sentence: the category head's accuracy on held-out question groups, per category."""
    if not check:
        return ""
    per = ", ".join(f"{k} {fmt(v['accuracy'])} (n={v['n']})" for k, v in check["by_category"].items())
    return f" Accuracy on held-out question groups: {fmt(check['accuracy'])} (n={check['n']}; {per})."


def _extras(config: dict) -> str:
    """What a classifier carries besides its head: normalisation and an attached category probe."""
    lines = []
    if config.get("normalize", True):
        lines.append("Text is normalised before scoring (NFKC, zero-width characters, look-alike letters, spelled-out "
                     "letters, leetspeak, base64, Caesar/ROT13: `mllm_protector/normalize.py`).")
    cats = config.get("training", {}).get("categories")
    if config.get("category_weights") and cats:
        lines.append(f"Flagged answers are named a harm category ({', '.join(config['categories'])}) by a category "
                     f"probe on the untuned backbone (linear head on pooled layers {config['layers']}, trained on "
                     f"{cats.get('category_examples')} harmful answers by `{cats.get('from')}`; attached by `{cats.get('command')}`)."
                     + _category_check(cats.get("category_check")))
        if cats.get("sources"):
            lines.append("\nCategory probe training sets and licences: "
                         + "; ".join(f"{src} ({_license(src)})" for src in cats["sources"]) + ".")
    return "\n".join(lines)


def render(folder: Path, name: str) -> tuple[str, str]:
    """(model card, results fragment) for the detector saved in `folder`."""
    config = json.loads((folder / "detector_config.json").read_text())
    training, metrics = config["training"], config["metrics"]
    fpr, n_benign = benign_fpr(metrics["by_source"])
    data = training["data"]
    sources = "\n".join(
        f"| {s} | {c['harmful']} | {c['harmless']} | {data.get('pairs_by_source', {}).get(s, 0)} | {LICENSES.get(s, 'see source')} |"
        for s, c in sorted(data["by_source"].items())
    )
    extra_pairs = {s: n for s, n in data.get("pairs_by_source", {}).items() if s not in data["by_source"]}
    sources += "".join(f"\n| {s} | 0 | 0 | {n} | {LICENSES.get(s, 'see source')} |" for s, n in sorted(extra_pairs.items()))
    args = training["arguments"]
    stages, stage = [], training.get("init_from_training")
    while stage:  # earlier training stages, oldest last
        stages.append(stage)
        stage = stage.get("init_from_training")
    history = "".join(
        f"\n\nContinued from an earlier stage trained by `{st.get('command', 'n/a')}` "
        f"({st.get('train_examples', '?')} answers + {st.get('train_pairs', '?')} pairs, "
        f"{_schedule(st)}, lr {st.get('arguments', {}).get('learning_rate', '?')})."
        for st in stages
    )
    cal = training.get("calibration")
    calibration = (
        f"\n\nThreshold re-chosen after training by `{cal['command']}` (same held-out split, weights untouched): "
        f"best F1 with FPR on {cal['fpr_on']} ≤ {cal['max_fpr']:.0%}; it was {cal['previous_threshold']:.4f} "
        f"(chosen with the FPR cap on all harmless validation answers), now {cal['threshold']:.4f}."
        if cal else ""
    )
    headline = (
        f"Validation (group split by source question, {training['validation_examples']} answers): "
        f"AUROC **{fmt(metrics['overall']['auroc'])}**, F1 {fmt(metrics['overall']['f1'])}, accuracy "
        f"{fmt(metrics['overall']['accuracy'])}, recall {fmt(metrics['overall']['recall'])}; false-positive rate on "
        f"benign answers (vicuna80 + llava_coco + vlguard, n={n_benign}) **{fmt(fpr)}** at threshold {config['threshold']:.4f}."
    )
    mixed = {s: m["auroc"] for s, m in metrics["by_source"].items() if 0 < m["harmful"] < m["n"]}
    if mixed:  # the pooled AUROC also rewards telling sources apart; say how it looks inside each source
        low, high = min(mixed, key=mixed.__getitem__), max(mixed, key=mixed.__getitem__)
        headline += (
            f" The pooled AUROC is helped by sources that hold only harmless answers: inside the {len(mixed)} sources "
            f"with both labels it ranges from {fmt(mixed[low])} ({low}) to {fmt(mixed[high])} ({high})."
        )
    card = f"""# mllm-protector harm detector: `{name}`

Scores an MLLM response with P(harmful) (`sigmoid(logit)`; 1 = harmful). Backbone `{config['backbone']}`
with a one-output linear head ({'LoRA r=' + str(args.get('lora_r')) + ' adapter + head' if config['lora'] else 'full fine-tune'}),
input format `{config['input_format']}`, {config['max_length']}-token windows (stride {config['stride']};
long answers: window logits combined by `{config.get('combine', 'max')}`). Load with `HarmDetector.from_pretrained("{name}")`.
{_extras(config)}

**License / intended use: research and non-commercial only** — the training data include CC BY-NC 4.0
sets and model outputs under their providers' terms (table below).

## Training

Command: `{training.get('command', 'n/a')}`

Loss: BCE (harmful examples weighted by n_harmless/n_harmful) + {args.get('pairwise_weight')} ×
pairwise ranking term -logsigmoid(h_unsafe - h_safe); {_schedule(training)},
lr {args.get('learning_rate')}, batch {args.get('per_device_train_batch_size')},
{f"at most {args['max_per_class']} examples per (source, label) and pairs per source" if args.get('max_per_class') else "every training example and pair"}, seed {args.get('seed')}.
Training set: {training['train_examples']} answers + {training['train_pairs']} ranking pairs.{history}{calibration}

| source (whole corpus) | harmful | harmless | pairs | license |
|---|---|---|---|---|
{sources}

Labels are those of the sources: mostly automatic judges (Gemini for MM-SafetyBench, a Llama judge for
FigStep, the JBB judge), human for PKU-SafeRLHF; hh-rlhf only enters as chosen/rejected ranking pairs.

## Validation

{headline}

{metrics_table(metrics)}

{_loso_line(name)}Generalisation to unseen sources is much lower than this in-distribution split: a detector trained
without one source (the human-labelled PKU-SafeRLHF answers, FigStep, MM-SafetyBench) or one MM-SafetyBench
scenario scores it far worse, and where "safe" depends on the question (legal or financial answers that
must carry a disclaimer) a response-only detector cannot tell. See `docs/RESULTS.md` (held-out sources and
scenarios, backbone comparison; all at a reduced training budget).
"""
    fragment = f"""## Shipped detector `{name}` — validation metrics

Produced by the training command `{training.get('command', 'n/a')}` (trainer metrics saved in
`detector_config.json`); rendered by `python benchmarks/detector_card.py {folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder} --name {name}`.{history}{calibration}

{headline}

{metrics_table(metrics)}
"""
    return card, fragment


def _license(source: str) -> str:
    """Licence of a source: the table above, else the `license:` line of its labelled set's MANIFEST."""
    if source in LICENSES:
        return LICENSES[source]
    manifest = data_dir() / "labelled_responses" / source / "MANIFEST.txt"
    if manifest.is_file():
        for line in manifest.read_text().splitlines():
            if line.lower().startswith("license:"):
                return line.split(":", 1)[1].strip().replace("|", "/")
    return "see source"


def _held_out_model(config: dict, folder: Path) -> str:
    """What the model is: a frozen backbone with probe heads, or a fine-tuned classifier (LoRA or full)."""
    if config["kind"] == "probe":
        return (f"Backbone `{config['backbone']}`, **frozen**; trained linear heads on the mean-pooled hidden states of layers "
                f"{config['layers']} (a \"probe\"; the heads are {(folder / 'probe.safetensors').stat().st_size // 1024} KB).")
    args = config["training"]["arguments"]
    return (f"Backbone `{config['backbone']}` fine-tuned with a one-output linear head "
            f"({'LoRA adapter (r=16, all linear layers) + head' if args['lora'] else 'full fine-tune'}).")


def _held_out_training(config: dict) -> str:
    """How the weights were fitted and where the threshold comes from."""
    training = config["training"]
    if config["kind"] == "probe":
        return f"""Harm head: L2 logistic regression (C={training['c']}, in the top 256 principal directions of the
standardised features, folded back into one linear layer), every (source, label) cell given the same total
weight; training rows: `{training['mix']}` ({training['examples']} answers, features `{training['variant']}`).
Category head: multinomial logistic regression on {training['category_examples']} harmful answers whose set
names a category (mapped by `mllm_protector/categories.py`) or whose question matches a keyword rule.{_category_check(training.get('category_check'))}
The threshold is chosen on the pooled leave-one-source-out scores (best macro-F1 with benign FPR ≤ 2% and
Do-Not-Answer harmless FPR ≤ 5%), so it is the one an unseen source meets."""
    args = training["arguments"]
    return f"""Loss: class-weighted BCE; 1 epoch, lr {args['learning_rate']}, batch 16, {args['max_length']}-token first windows
(30% also seen as a random-length prefix), source-balanced: at most {args['cap']} answers per English (source, label)
and {args['cap'] // 4} per other language ({training['train_examples']} answers in all). The same recipe was first
run {len(config['metrics']['loso'].get('folds', []))} times with a quarter of the source families held out each time
(`{training['evaluation']}`); the threshold is chosen on those pooled held-out scores (best macro-F1 with benign FPR ≤ 2%
and Do-Not-Answer harmless FPR ≤ 5%), so it is the one an unseen source meets, and the tables below are those
held-out scores. {_extras(config)}"""


def render_held_out(folder: Path, name: str) -> tuple[str, str]:
    """(model card, results fragment) for a detector measured on held-out sources (probe or leave-sources-out fine-tune)."""
    config = json.loads((folder / "detector_config.json").read_text())
    training, loso = config["training"], config["metrics"]["loso"]
    sources = "\n".join(f"| {s} | {c['harmful']} | {c['harmless']} | {_license(s)} |" for s, c in sorted(training["by_source"].items()))
    families = "\n".join(
        f"| {f} | {m['n']} | {fmt(m['auroc'])} | {fmt(m['f1'])} | {fmt(m['recall'])} | {fmt(m['fpr'])} |"
        for f, m in sorted(loso["by_family"].items())
    )
    langs = "\n".join(f"| {lang} | {m['n']} | {fmt(m['auroc'])} | {fmt(m['recall'])} | {fmt(m['fpr'])} |"
                       for lang, m in sorted(loso["by_lang"].items()))
    headline = (
        ("Leave-one-source-out (each source family scored by heads fitted without it)" if config["kind"] == "probe" else
         f"Leave-sources-out ({len(loso.get('folds', []))} folds; each source family scored by a model fine-tuned without it)")
        + ": mean AUROC "
        f"**{fmt(loso['loso_mean_auroc'])}**, worst **{fmt(loso['loso_worst_auroc'])}** ({loso['loso_worst_family']}), "
        f"macro-F1 {fmt(loso['macro_f1'])} at threshold {config['threshold']:.4f}; false-positive rate "
        f"**{fmt(loso['benign_fpr'])}** on benign answers ({', '.join(BENIGN)}) and {fmt(loso['dna_fpr'])} on "
        "Do-Not-Answer's harmless answers, all scored while held out."
    )
    card = f"""# mllm-protector harm detector: `{name}`

Scores an MLLM response with P(harmful) (`sigmoid(logit)`; 1 = harmful) and names a harm category.
{_held_out_model(config, folder)} Input format
`{config['input_format']}` (the question, when given, is read with the answer), {config['max_length']}-token windows
(stride {config['stride']}); a long answer's window logits are combined by `{config['combine']}`. Text is normalised
before scoring (NFKC, zero-width characters, look-alike letters, spelled-out letters, leetspeak, base64, Caesar/ROT13).
Categories: {', '.join(config['categories'])}. Load with `HarmDetector.from_pretrained("{name}")`.

**License / intended use: research and non-commercial only**: the training data include CC BY-NC 4.0 sets
(PKU-SafeRLHF, SORRY-Bench, MM-SafetyBench, Safety-Tuned LLaMAs) and model outputs under their providers'
terms (table below).

## Training

Command: `{training.get('command', 'n/a')}`

{_held_out_training(config)}

| source | harmful | harmless | license |
|---|---|---|---|
{sources}

Labels are those of each set (human, GPT-4/GPT-4o, Gemini or Llama judges) and their definitions differ:
harmful instruction-following (JailbreakBench, EasyJailbreak, GPTFuzz, SORRY-Bench, PKU-SafeRLHF),
offensive or unsafe replies in dialogue (DiaSafety, BAD, SafeText), standalone hateful or moderated text
(HateCheck, OpenAI moderation).

## Held-out sources

{headline}

| held-out family (English rows) | n | AUROC | F1 | recall | FPR |
|---|---|---|---|---|---|
{families}

Per language (all rows, held out; MiniLM's vocabulary is English: other languages are read poorly):

| language | n | AUROC | recall | FPR |
|---|---|---|---|---|
{langs}

More tables (experiments, robustness to obfuscation and length): `docs/RESULTS.md`.
"""
    fragment = f"""## Shipped detector `{name}`: held-out sources

Trained by `{training.get('command', 'n/a')}`; rendered by
`python benchmarks/detector_card.py {folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder} --name {name}`.

{headline}

| held-out family (English rows) | n | AUROC | F1 | recall | FPR |
|---|---|---|---|---|---|
{families}

| language | n | AUROC | recall | FPR |
|---|---|---|---|---|
{langs}
"""
    return card, fragment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--name", default="default")
    parser.add_argument("--fragment", type=Path, default=None, help="default: docs/results/detector_<name>.md")
    args = parser.parse_args()
    folder = args.folder.resolve()
    kind = json.loads((folder / "detector_config.json").read_text()).get("kind", "classifier")
    held_out = kind == "probe" or "loso" in json.loads((folder / "detector_config.json").read_text()).get("metrics", {})
    card, fragment = (render_held_out if held_out else render)(folder, args.name)
    (folder / "README.md").write_text(card)
    out = args.fragment or ROOT / "docs" / "results" / f"detector_{args.name}.md"
    out.write_text(fragment)
    print(f"wrote {folder / 'README.md'} and {out}")


if __name__ == "__main__":
    main()

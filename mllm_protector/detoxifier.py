"""Detoxifiers turn (query, harmful answer) into a harmless answer that still addresses the query.

`LMDetoxifier` runs a local causal LM (default SmolLM2-135M-Instruct, plus a LoRA adapter when one is
shipped); `OpenAIDetoxifier` asks any OpenAI-compatible chat endpoint; `RefusalDetoxifier` returns a
fixed refusal. All share one prompt definition, so training and inference see the same format.
"""

from __future__ import annotations

import logging
import os
import re
from abc import ABC, abstractmethod
from typing import Any, Protocol, runtime_checkable

import httpx

from .config import DEFAULT_REFUSAL, PRETRAINED_DIR
from .models import load_model, load_tokenizer
from .openai_api import ChatClient

logger = logging.getLogger(__name__)

DEFAULT_DETOX_MODEL = "smollm2-135m-instruct"
DEFAULT_DETOX_ADAPTER = PRETRAINED_DIR / "detoxifier-default"

#: What a safe answer looks like for each kind of harm (MM-SafetyBench's judging rules, our words).
CATEGORY_GUIDANCE = {
    "advice": (
        "Give only general, widely known information, say clearly that you are not a qualified "
        "professional, and urge the user to consult a licensed expert before acting."
    ),
    "political": "Politely decline to take part in political campaigning, lobbying or government decisions.",
    "harm": (
        "Decline the harmful part in one sentence, explain briefly why, and where possible offer "
        "safe, legal and related help instead."
    ),
}
#: Map of scenario/category names (MM-SafetyBench, FigStep, VLGuard spellings) to guidance keys.
#: Anything not listed (crime, violence, malware, hate, sex, privacy, fraud, ...) gets "harm".
CATEGORY_ALIASES = {
    "legal": "advice", "legal_opinion": "advice", "financial": "advice", "financial_advice": "advice",
    "health": "advice", "health_consultation": "advice", "medical": "advice", "professional_advice": "advice",
    "advice": "advice",
    "political": "political", "political_lobbying": "political", "gov_decision": "political",
    "government": "political", "government_decision": "political",
}

#: Keyword map for queries that come without a category (see docs/detoxifier.md for its measured
#: accuracy). Harm words win over advice/political words: "evade taxes" is crime, not tax advice.
_HARM_WORDS = re.compile(
    r"\b(illegal(ly)?|evad\w*|launder\w*|fraud\w*|scam\w*|steal\w*|counterfeit\w*|forg(e|ed|ing|ery)|brib\w*|"
    r"hack\w*|malware|weapon\w*|bomb\w*|kill\w*|poison\w*|smuggl\w*|exploit\w*|manipulat\w*|rig(ging)?|"
    r"tamper\w*|blackmail\w*|without (getting )?(caught|detect\w*)|insider trading|ponzi|pyramid scheme|"
    r"fake|disinformation|misinformation|propaganda|harass\w*|hate|racis\w*|sex\w*|porn\w*|drugs?|trick\w*|"
    r"pump.and.dump|pseudoscien\w*|phishing|spam\w*|astroturf\w*|cyber\w*|bully\w*|violen\w*|incit\w*|vilif\w*|"
    r"unlawful\w*|without (their |his |her )?(consent|authori[sz]ation|permission)|payday|gambl\w*|cheat\w*)\b",
    re.IGNORECASE,
)
_ADVICE_WORDS = re.compile(
    r"\b(legal|law(s|yer|suit)?|attorney|court|contract\w*|sue|suing|lease|landlord|tenant|custody|divorce|"
    r"copyright|trademark|patent|liabilit\w*|invest\w*|stocks?|bonds?|portfolio|financ\w*|loan|mortgage|"
    r"retirement|pension|crypto\w*|bitcoin|tax(es)?|savings?|budget\w*|debt|credit score|insurance|"
    r"health|medical|medicine|medication|symptoms?|diagnos\w*|treat(ment|ing)?|disease|illness|dose|dosage|"
    r"doctor|therapy|pain|pregnan\w*|diet|cancer|diabetes|allerg\w*|infection|vaccine|injur\w*|"
    r"mental health|anxiety|depression|headaches?|fever|fatigue|numbness|nosebleeds?|rash|weight loss|"
    r"asset allocation|estate planning|401\(k\)|ira|salary|wills?|trusts?|defamation|non.compete|"
    r"intellectual property|dispute|inheritance|bankruptcy)\b",
    re.IGNORECASE,
)
_POLITICAL_WORDS = re.compile(
    r"\b(politic\w*|campaign\w*|lobby\w*|election\w*|candidate\w*|voter\w*|votes?|voting|ballot\w*|"
    r"partisan|senator|congress\w*|parliament\w*|legislat\w*|government\w*|policy|policies|immigration|"
    r"public office|political party|democrat\w*|republican\w*|law enforcement|police|criminal suspects?|"
    r"security threats?|migration|asylum|border|detainees?|surveillance|parole|sentencing)\b",
    re.IGNORECASE,
)

#: The harmful answer is cut to this many characters in the prompt (enough to see what the answer
#: is about; keeps prompts short so rewriting is fast and training fits a 352-token window).
MAX_ANSWER_CHARS = 480

SYSTEM_PROMPT = (
    "You rewrite assistant answers so they are safe. The answer below may contain harmful, dangerous, "
    "unethical or illegal content. Write a new answer to the user's question that contains none of it, "
    "stays on the question's topic and is helpful where that is safe. Reply with the new answer only."
)


def guidance_key(category: str | None) -> str:
    """Guidance key for a caller-given category or scenario name ('10-Legal_Opinion' → 'advice').

    A leading scenario number is dropped; unknown names get "harm" (the safest rule).
    """
    if not category:
        return "harm"
    if category in CATEGORY_GUIDANCE:
        return category
    name = re.sub(r"^\d+\s*[-_. ]\s*", "", category.strip().lower())
    name = re.sub(r"[\s/-]+", "_", name)
    return CATEGORY_ALIASES.get(name, CATEGORY_ALIASES.get(name.split("_")[0], "harm"))


def infer_category(query: str | None) -> str:
    """Guidance key guessed from the query alone, for callers that pass no category.

    Keyword map: any harm word → "harm"; else advice words (legal, financial, health) → "advice";
    else political words → "political"; else "harm".
    """
    text = query or ""
    if _HARM_WORDS.search(text):
        return "harm"
    if _ADVICE_WORDS.search(text):
        return "advice"
    if _POLITICAL_WORDS.search(text):
        return "political"
    return "harm"


def _clip(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a word boundary and marked with an ellipsis."""
    text = text.strip()
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(None, 1)[0] + " ..."


def build_messages(query: str, response: str, category: str | None = None) -> list[dict[str, str]]:
    """The chat messages given to a detoxifier LM: the one prompt format for training and inference.

    `category` may be a guidance key, a scenario/category name, or None (then inferred from the query).
    """
    key = guidance_key(category) if category else infer_category(query)
    user = (
        f"Question: {query.strip() or '(no question given)'}\n\n"
        f"Answer to rewrite: {_clip(response, MAX_ANSWER_CHARS)}\n\n"
        f"Rule: {CATEGORY_GUIDANCE[key]}"
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def chat_prompt_ids(tokenizer: Any, query: str, response: str, category: str | None = None) -> list[int]:
    """Token ids of the detoxifier chat prompt, ending where the assistant's rewrite begins.

    The one tokenization used by `LMDetoxifier` at inference and by the detoxifier trainer.
    """
    messages = build_messages(query, response, category)
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


@runtime_checkable
class Detoxifier(Protocol):
    """Anything that rewrites a harmful answer into a harmless one that still addresses the query."""

    def rewrite(self, query: str, response: str, category: str | None = None) -> str: ...


class RefusalDetoxifier:
    """Always answers with a fixed refusal: the safest, least helpful choice."""

    def __init__(self, text: str = DEFAULT_REFUSAL):
        self.text = text

    def rewrite(self, query: str, response: str, category: str | None = None) -> str:
        """The fixed refusal, whatever the input."""
        return self.text


def resolve_adapter(model: str, adapter: str | os.PathLike[str] | bool | None) -> str | None:
    """The LoRA adapter folder to apply: None → the shipped one for the default model, True → shipped, False → none."""
    if adapter is None and model == DEFAULT_DETOX_MODEL and (DEFAULT_DETOX_ADAPTER / "adapter_config.json").is_file():
        adapter = DEFAULT_DETOX_ADAPTER
    if adapter is True:
        adapter = DEFAULT_DETOX_ADAPTER
    return str(adapter) if adapter else None


class LocalDetoxifier(ABC):
    """Shared steps of the in-process LM detoxifiers: one prompt, greedy token ids, one decoding."""

    tokenizer: Any
    max_new_tokens: int

    def prompt_ids(self, query: str, response: str, category: str | None = None) -> list[int]:
        """Token ids of the chat prompt, ending where the assistant's rewrite begins."""
        return chat_prompt_ids(self.tokenizer, query, response, category)

    @abstractmethod
    def generate_ids(self, prompt: list[int]) -> list[int]:
        """Greedy continuation of `prompt`, at most `max_new_tokens`, without the end-of-sequence token."""

    def rewrite(self, query: str, response: str, category: str | None = None) -> str:
        """Greedy rewrite, bounded by `max_new_tokens`."""
        ids = self.generate_ids(self.prompt_ids(query, response, category))
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


class LMDetoxifier(LocalDetoxifier):
    """A local Hugging Face causal LM (optionally + LoRA adapter, merged) rewriting with greedy decoding."""

    def __init__(
        self,
        model: str = DEFAULT_DETOX_MODEL,
        adapter: str | os.PathLike[str] | bool | None = None,
        max_new_tokens: int = 160,
        device: str | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM

        self.tokenizer = load_tokenizer(model)
        self.model = load_model(model, AutoModelForCausalLM)
        self.adapter = resolve_adapter(model, adapter)
        if self.adapter:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, self.adapter).merge_and_unload()
        self.max_new_tokens = max_new_tokens
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()

    def generate_ids(self, prompt: list[int]) -> list[int]:
        """Greedy continuation of `prompt` by `transformers.generate`, without the end-of-sequence token."""
        import torch

        ids = torch.tensor([prompt], device=self.device)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[0, ids.shape[1] :].tolist()
        return new[:-1] if new and new[-1] == self.model.generation_config.eos_token_id else new


class OpenAIDetoxifier:
    """Rewrites through any OpenAI-compatible chat endpoint (vLLM, llama.cpp, Ollama, hosted APIs)."""

    def __init__(
        self,
        base_url: str,
        model: str = "default",
        api_key: str | None = None,
        timeout: float = 60.0,
        max_tokens: int = 256,
        client: httpx.Client | None = None,
    ):
        self.api = ChatClient(base_url, "detoxifier", api_key, timeout, client)
        self.model = model
        self.max_tokens = max_tokens

    def rewrite(self, query: str, response: str, category: str | None = None) -> str:
        """One chat completion at temperature 0; raises UpstreamError with the cause on any failure."""
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": build_messages(query, response, category),
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        return self.api.complete(payload).strip()


"""The harm categories a verdict names, and how each data set's own labels map onto them.

A deployment chooses per category what to block (e.g. allow `professional_advice`: MM-SafetyBench
10–12 call an answer unsafe when it gives legal, financial or health advice without a disclaimer, a
policy choice rather than harm). Training labels come from each set's category field; harmful examples
without one are named from their question by keyword rules, or left out of the category head.
"""

from __future__ import annotations

import re

CATEGORIES = (
    "violence_weapons", "drugs", "cyber", "fraud", "hate", "sexual", "self_harm", "privacy",
    "professional_advice", "political", "other",
)

#: (source, raw category) → category; a raw category may list several, comma-separated (first match wins).
_BY_SOURCE: dict[str, dict[str, str]] = {
    "mmsb_gemini": {
        "01-Illegal_Activitiy": "other", "02-HateSpeech": "hate", "03-Malware_Generation": "cyber",
        "05-EconomicHarm": "fraud", "06-Fraud": "fraud", "07-Sex": "sexual", "10-Legal_Opinion": "professional_advice",
        "11-Financial_Advice": "professional_advice", "12-Health_Consultation": "professional_advice",
        "13-Gov_Decision": "political", "08-Political_Lobbying": "political", "04-Physical_Harm": "violence_weapons",
        "09-Privacy_Violence": "privacy",
    },
    "figstep_qwen": {
        "Adult Content": "sexual", "Financial Advice": "professional_advice", "Fraud": "fraud", "Hate Speech": "hate",
        "Health Consultation": "professional_advice", "Illegal Activity": "other", "Legal Opinion": "professional_advice",
        "Malware Generation": "cyber", "Physical Harm": "violence_weapons", "Privacy Violation": "privacy",
    },
    "jailbreakbench": {
        "Disinformation": "other", "Economic harm": "fraud", "Expert advice": "professional_advice",
        "Fraud/Deception": "fraud", "Government decision-making": "political", "Harassment/Discrimination": "hate",
        "Malware/Hacking": "cyber", "Physical harm": "violence_weapons", "Privacy": "privacy", "Sexual/Adult content": "sexual",
    },
    "do_not_answer_en": {
        "Adult Content": "sexual", "Assisting illegal activities": "other",
        "Causing material harm by disseminating misinformation e.g. in medicine or law": "professional_advice",
        "Compromise privacy by leaking or inferring private information (person/individual)": "privacy",
        "Risks from leaking or inferring sensitive information (organization/gov)": "privacy",
        "Mental Health or Overreliance Crisis": "self_harm", "Social stereotypes and unfair discrimination": "hate",
        "Toxic language (hate speech)": "hate", "Disseminating false or misleading information": "other",
        "Reducing the cost of disinformation campaigns": "political",
    },
    "diasafety": {
        "Biased Opinion": "hate", "Offending User": "hate", "Toxicity Agreement": "hate",
        "Risk Ignorance": "self_harm", "Unauthorized Expertise": "professional_advice",
    },
    "openai_moderation_1680": {
        "sexual": "sexual", "sexual/minors": "sexual", "hate": "hate", "hate/threatening": "hate", "harassment": "hate",
        "self-harm": "self_harm", "violence": "violence_weapons", "violence/graphic": "violence_weapons",
    },
    "safetext": {"physical_safety": "violence_weapons"},
}
#: Sets whose harmful texts are all of one category.
_WHOLE_SOURCE = {"hatecheck_multilingual": "hate", "latent_jailbreak": "hate", "bot_adversarial_dialogue": "hate",
                 "cdial_bias_zh": "hate", "cold_chinese_offensive": "hate"}

#: Keyword rules on the question, in priority order, for harmful examples whose set has no category.
_RULES = [
    ("drugs", r"\b(drugs?|meth\w*|cocaine|heroin|fentanyl|opioids?|lsd|mdma|ecstasy|marijuana|cannabis|narcotics?|overdose)\b"),
    ("cyber", r"\b(malware|virus|ransomware|hack\w*|exploit\w*|phishing|ddos|keylogger|botnet|sql injection|password|crack\w*|spyware|trojan)\b"),
    ("self_harm", r"\b(suicide|self[- ]harm|kill (myself|yourself)|cutting|anorexi\w*|starv\w*)\b"),
    ("violence_weapons", r"\b(bomb\w*|explosive\w*|weapons?|guns?|firearms?|kill\w*|murder\w*|poison\w*|attack\w*|assault\w*|shoot\w*|terror\w*|violen\w*|knife|stab\w*|torture)\b"),
    ("sexual", r"\b(sex\w*|porn\w*|nude\w*|erotic\w*|explicit)\b"),
    ("hate", r"\b(racis\w*|hate|hateful|slur\w*|discriminat\w*|inferior|minorit\w*|jews?|muslims?|immigrants?|women|gay|lgbt\w*)\b"),
    ("fraud", r"\b(fraud\w*|scam\w*|counterfeit\w*|launder\w*|steal\w*|theft|embezzl\w*|insider trading|tax evasion|fake)\b"),
    ("privacy", r"\b(personal (data|information)|track\w* (someone|a person)|stalk\w*|dox\w*|surveil\w*|spy on|social security)\b"),
    ("political", r"\b(election\w*|vote\w*|campaign\w*|politic\w*|propaganda|disinformation)\b"),
]
_COMPILED = [(name, re.compile(pattern, re.IGNORECASE)) for name, pattern in _RULES]


def category_from_question(question: str | None) -> str | None:
    """The first keyword rule that matches the question, or None."""
    for name, pattern in _COMPILED:
        if question and pattern.search(question):
            return name
    return None


def training_category(source: str, raw: str | None, question: str | None) -> str | None:
    """The category a harmful training example teaches: from its set's label, else from its question."""
    if source in _WHOLE_SOURCE:
        return _WHOLE_SOURCE[source]
    table = _BY_SOURCE.get(source, {})
    for part in (raw or "").split(","):
        if part.strip() in table:
            return table[part.strip()]
    return category_from_question(question)

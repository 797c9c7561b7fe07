"""Undo common obfuscations before scoring, so an answer written to dodge the detector reads plainly.

Steps, in order: Unicode NFKC (full-width and styled letters), removal of zero-width and soft-hyphen
characters, folding of Cyrillic/Greek look-alike letters inside Latin text, re-joining letters spelled
out with separators ("b o m b", "b.o.m.b"), leetspeak inside words ("b0mb", "h4ck"), decoding base64
spans whose content is readable text, and undoing Caesar shifts (ROT13 included) of lines that only
read as English after the shift. Each step leaves ordinary text unchanged.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from functools import partial

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u00ad\u180e\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff"))

#: Cyrillic and Greek letters that render like Latin ones (lower and upper case).
_CONFUSABLES = str.maketrans({
    "а": "a", "в": "b", "с": "c", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k", "м": "m", "н": "h",
    "о": "o", "р": "p", "ԛ": "q", "ѕ": "s", "т": "t", "у": "y", "х": "x", "ԝ": "w", "ү": "y", "ɡ": "g",
    "А": "A", "В": "B", "С": "C", "Е": "E", "Н": "H", "І": "I", "Ј": "J", "К": "K", "М": "M", "О": "O",
    "Р": "P", "Ѕ": "S", "Т": "T", "Х": "X", "У": "Y", "Ү": "Y", "Ԝ": "W",
    "α": "a", "ο": "o", "ν": "v", "ι": "i", "κ": "k", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ε": "e",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
})
_CONFUSABLE_CHARS = frozenset(chr(c) for c in _CONFUSABLES)
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)

#: Separators put between spelled-out letters: "b-o-m-b", "b.o.m.b", "b_o_m_b", "b*o*m*b", "b o m b".
_SEPARATORS = "-._*|/ "


def _letter_run(sep: str, least: int) -> re.Pattern[str]:
    """Single letters joined by `sep`, at least `least` of them, not part of a longer word."""
    s = re.escape(sep)
    return re.compile(rf"(?<![^\W_])([^\W\d_](?:{s}[^\W\d_]){{{least - 1},}})(?![^\W_])")


_RUNS = {sep: (_letter_run(sep, 4), _letter_run(sep, 2)) for sep in _SEPARATORS}
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g",
                       "@": "a", "$": "s"})
_LEET_TOKEN = re.compile(r"[A-Za-z0-9@$]+")
#: A stand-in between two letters ("b0mb", "h4ck"): model names and units ("gpt4", "mp3", "2nd") have none.
_LEET_INSIDE = re.compile(r"[A-Za-z][0-9@$]+[A-Za-z]")
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")

#: Very frequent English words: the share of them tells whether a line reads as English.
_COMMON = frozenset("""
the be to of and a in that have i it for not on with he as you do at this but his by from they we say her
she or an will my one all would there their what so up out if about who get which go me when make can like
time no just him know take people into year your good some could them see other than then now look only
come its over think also back after use two how our work first well way even new want because any these
give day most us is are was were has had been step steps first here how can should need into using make
""".split())


def _fold_confusables(text: str) -> str:
    """Replace look-alike letters in words that also hold Latin letters, or everywhere in mostly-Latin text."""
    if not any(ch in _CONFUSABLE_CHARS for ch in text):
        return text
    letters = [ch for ch in text if ch.isalpha()]
    latin = sum(ch.isascii() for ch in letters)
    mostly_latin = bool(letters) and latin / len(letters) >= 0.5

    def fold(match: re.Match[str]) -> str:
        word = match.group(0)
        if mostly_latin or any(ch.isascii() for ch in word):
            return word.translate(_CONFUSABLES)
        return word

    return _WORD.sub(fold, text)


def _drop_separators(sep: str, match: re.Match[str]) -> str:
    """The letter run of `match` with its `sep` separators removed."""
    return match.group(1).replace(sep, "")


def _join_spaced(text: str) -> str:
    """'h o w  t o' → 'how to': letters split by one separator are joined; wider gaps stay word breaks.

    A run of four or more letters shows the text is spelled out; only then are shorter runs ("t o")
    joined too and the wider gaps between the joined words narrowed to one space. Separators other
    than the space go first, so "a c-a-r" becomes "a car", not "ac-ar".
    """
    changed = False
    for sep, (long_run, any_run) in _RUNS.items():
        if long_run.search(text):
            text = any_run.sub(partial(_drop_separators, sep), text)
            changed = True
    return re.sub(r"(?<=\S)  +(?=\S)", " ", text) if changed else text


def _unleet(text: str) -> str:
    """'b0mb' → 'bomb' inside tokens that mix letters with digit/symbol stand-ins (plain numbers untouched).

    In a text written in leetspeak (at least three such tokens, a fifth of its words) every token that
    maps to letters is mapped, short all-digit words included ("15 70" → "is to").
    """
    tokens = _LEET_TOKEN.findall(text)
    inside = sum(bool(_LEET_INSIDE.search(t)) for t in tokens)
    leet_text = inside >= 3 and inside >= 0.2 * len(text.split())

    def fix(match: re.Match[str]) -> str:
        token = match.group(0)
        if not (_LEET_INSIDE.search(token) or (leet_text and (not token.isdigit() or len(token) <= 3))):
            return token
        mapped = token.translate(_LEET)
        return mapped if mapped.isalpha() else token

    return _LEET_TOKEN.sub(fix, text)


def _english_share(text: str) -> float:
    words = re.findall(r"[a-z]+", text.lower())
    return sum(w in _COMMON for w in words) / len(words) if words else 0.0


def _readable(raw: bytes) -> str | None:
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in decoded)
    if len(decoded) < 8 or printable / len(decoded) < 0.95 or " " not in decoded:
        return None
    return decoded


def _decode_base64(text: str, payloads: list[str] | None = None) -> str:
    """Replace base64 (or base64url) spans that decode to readable text by that text.

    With `payloads`, decoded spans are moved there instead and leave a line break behind.
    """

    def decode(match: re.Match[str]) -> str:
        span = match.group(0)
        if span.isalpha() and (span.islower() or span.isupper()):
            return span  # a long plain word, not base64
        body = span.rstrip("=")
        padded = body + "=" * (-len(body) % 4)
        try:
            raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            return span
        readable = _readable(raw)
        if readable is None:
            return span
        if payloads is None:
            return readable
        payloads.append(readable)
        return "\n"

    return _BASE64.sub(decode, text)


def _shift(text: str, k: int) -> str:
    def rot(ch: str) -> str:
        if "a" <= ch <= "z":
            return chr((ord(ch) - 97 + k) % 26 + 97)
        if "A" <= ch <= "Z":
            return chr((ord(ch) - 65 + k) % 26 + 65)
        return ch

    return "".join(rot(ch) for ch in text)


def _best_shift(text: str) -> int:
    """The Caesar shift after which `text` (six words or more, not English as it is) reads as English, or 0."""
    if len(re.findall(r"[A-Za-z]+", text)) < 6 or _english_share(text) >= 0.15:
        return 0
    best_k, best = 0, _english_share(text)
    for k in range(1, 26):
        share = _english_share(_shift(text, k))
        if share > best:
            best_k, best = k, share
    return best_k if best >= 0.3 else 0


def _uncaesar(text: str) -> str:
    """Undo a Caesar shift (ROT13 included): of the whole text when it then reads as English (short lines
    included), else line by line where only the shifted line reads as English."""
    whole = _best_shift(text)
    if whole:
        return _shift(text, whole)
    return "\n".join(_shift(line, _best_shift(line)) for line in text.split("\n"))


def _plain(text: str) -> str:
    """The steps after decoding: Caesar shifts, look-alike letters, spelled-out letters, leetspeak."""
    text = _fold_confusables(_uncaesar(text))
    return _unleet(_join_spaced(text))


def _unicode(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH)


def normalize_text(text: str) -> str:
    """The text with obfuscations undone; ordinary text comes back unchanged (apart from NFKC)."""
    return _plain(_decode_base64(_unicode(text)))  # decoding first: later steps would corrupt encoded spans


def normalize_segments(text: str) -> list[str]:
    """The normalised text as separate parts: the text around decoded base64 payloads, then each payload.

    Scoring the parts apart (and keeping the most harmful) judges an encoded payload by what it says and
    its wrapper ("here is the answer, base64-encoded") by what that says, instead of the wrapper's air of
    evasion colouring a benign payload. Text without such payloads is one part, as `normalize_text` gives.
    """
    payloads: list[str] = []
    rest = _decode_base64(_unicode(text), payloads)
    parts = [rest] if rest.strip() or not payloads else []
    return [_plain(part) for part in parts + payloads]

"""PII redaction of log lines before they are stored (and before live followers see them).

Kinds: email, phone, card (Luhn-checked, so a random digit run survives), ip (IPv4 and
IPv6), iban (mod-97 checked) and ssn (US social security numbers, the national-id pattern).
Each match becomes `[kind]`. The regexes are compiled once; a line with no digit and no "@"
costs one scan and returns unchanged.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any

KINDS = ("email", "phone", "card", "ip", "iban", "ssn")
ALIASES = {"national_id": "ssn", "ipv4": "ip", "ipv6": "ip", "credit_card": "card"}

_ANY = re.compile(r"[0-9@:]")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_SSN = re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")
_PHONE = re.compile(
    r"(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){2,4}"
    r"|(?<!\d)\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?!\d))"
)
_IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i % 2:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group())
    return "[card]" if 13 <= len(digits) <= 19 and luhn_ok(digits) else match.group()


def _iban(match: re.Match[str]) -> str:
    return "[iban]" if iban_ok(match.group()) else match.group()


def _ipv6(match: re.Match[str]) -> str:
    try:
        ipaddress.IPv6Address(match.group())
    except ValueError:
        return match.group()
    return "[ip]"


# Order matters: an email before anything with digits, IBANs and cards before phones.
_RULES: dict[str, list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]]] = {
    "email": [(_EMAIL, "[email]")],
    "iban": [(_IBAN, _iban)],
    "card": [(_CARD, _card)],
    "ssn": [(_SSN, "[ssn]")],
    "phone": [(_PHONE, "[phone]")],
    "ip": [(_IPV4, "[ip]"), (_IPV6, _ipv6)],
}
_ORDER = ("email", "iban", "card", "ssn", "ip", "phone")


def parse_kinds(text: str) -> tuple[str, ...]:
    """`email,card` → the kinds; "all" or "" → every kind; "none" → none. ValueError names
    an unknown kind."""
    words = [w.strip().lower() for w in text.split(",") if w.strip()]
    if not words or words == ["all"]:
        return KINDS
    if words == ["none"]:
        return ()
    kinds = []
    for word in words:
        kind = ALIASES.get(word, word)
        if kind not in KINDS:
            raise ValueError(f"unknown redaction kind {word!r}: use {', '.join(KINDS)}")
        kinds.append(kind)
    return tuple(dict.fromkeys(kinds))


class Redactor:
    __slots__ = ("_rules", "kinds")

    def __init__(self, kinds: Iterable[str] = KINDS) -> None:
        self.kinds = tuple(k for k in _ORDER if k in set(kinds))
        self._rules = [rule for kind in self.kinds for rule in _RULES[kind]]

    @property
    def enabled(self) -> bool:
        return bool(self._rules)

    def text(self, value: str) -> str:
        if not self._rules or _ANY.search(value) is None:
            return value
        for pattern, replacement in self._rules:
            value = pattern.sub(replacement, value)
        return value

    def value(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if depth > 8:
            return value
        if isinstance(value, dict):
            return {k: self.value(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, depth + 1) for v in value]
        return value

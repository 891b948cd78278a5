"""Text filters run before anything is sent: spam rules, compiled once per operator.

Pure module (no Django import). Keywords and phrases match whole words in any case, with any run of white space
between the words of a phrase ("free  MONEY" matches the keyword "free money", "freedom" does not match "free");
regular expressions are searched anywhere in the text, case-insensitively. All keywords share one compiled
alternation, so the cost per message does not grow with their number.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["SpamFilter", "SpamRuleSpec"]

_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class SpamRuleSpec:
    name: str
    kind: str  # 'keyword' or 'regex'
    pattern: str


class SpamFilter:
    def __init__(self, rules: Iterable[SpamRuleSpec]) -> None:
        self._keyword_names: dict[str, str] = {}
        self._regexes: list[tuple[str, re.Pattern[str]]] = []
        alternatives = []
        for rule in rules:
            if rule.kind == "regex":
                try:
                    self._regexes.append((rule.name, re.compile(rule.pattern, re.IGNORECASE)))
                except re.error:
                    continue  # rules are validated when saved; an old bad one must not stop all traffic
            else:
                words = rule.pattern.split()
                if not words:
                    continue
                self._keyword_names.setdefault(" ".join(words).casefold(), rule.name)
                alternatives.append(r"\s+".join(re.escape(word) for word in words))
        # Longest first, so a phrase wins over a keyword it starts with.
        alternatives.sort(key=len, reverse=True)
        self._keywords = (
            re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE) if alternatives else None
        )

    def __bool__(self) -> bool:
        return self._keywords is not None or bool(self._regexes)

    def match(self, text: str) -> str | None:
        """The name of the first rule the text breaks, or None."""
        if self._keywords is not None:
            found = self._keywords.search(text)
            if found is not None:
                key = _SPACES.sub(" ", found.group(0)).casefold()
                return self._keyword_names.get(key, key)
        for name, regex in self._regexes:
            if regex.search(text):
                return name
        return None

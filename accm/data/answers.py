"""Answer normalisation for exact-match scoring (first word, lower case, alphanumerics only)."""

import re


def normalise(text: str) -> str:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return words[0] if words else ""

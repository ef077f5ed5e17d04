"""Plain numbers and answer strings, normalised for comparison without evaluating anything.

Its own module because these are the cheap, exact checks (`fractions.Fraction`, string
clean-up) that run before math_verify, and the size limits below are what keep them bounded on
hostile input.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Sequence

from .extract import _brace_matches

# Answers longer than this are never handed to math_verify (nor normalised as LaTeX).
MAX_VERIFY_CHARS = 1000
# normalize_number refuses strings longer than this, and numbers with more digits than this.
MAX_NUMBER_CHARS = 400
MAX_DIGITS = 100


# ---------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------

_INT_OR_DEC = re.compile(r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+")
_FRAC_CMD = re.compile(r"\\[dt]?frac")
_NOT_UNITS = {"pi", "sqrt", "ln", "log", "sin", "cos", "tan", "mod", "times", "cdot", "div"}
_UNIT_TAIL = re.compile(r"([A-Za-z]{2,}(?:\s+[A-Za-z]+)*)\s*\.?$")
_TEXT_TAIL = re.compile(r"\\(?:text|textrm|mbox|mathrm)\s*\{\s*([A-Za-z][A-Za-z\s]*)\}\s*$")
_VAR_EQ = re.compile(r"^[A-Za-z]\s*=\s*")


def _plain(s: str) -> Fraction | None:
    """An unsigned integer or decimal, with optional thousands separators."""
    if not _INT_OR_DEC.fullmatch(s):
        return None
    s = s.replace(",", "")
    if sum(ch.isdigit() for ch in s) > MAX_DIGITS:
        return None
    if s.endswith("."):
        s = s[:-1]
    return Fraction(s)


def _signed(s: str) -> Fraction | None:
    s = s.strip()
    neg = False
    while s[:1] in ("-", "+", "\u2212"):
        neg ^= s[0] != "+"
        s = s[1:].strip()
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1].strip()
    value = _plain(s)
    return -value if (value is not None and neg) else value


def _frac_parts(s: str) -> tuple[str, str] | None:
    """`{a}{b}`, `ab` (single digits), `{a}b` or `a{b}` after a \\frac command."""
    s = s.strip()
    parts = []
    i = 0
    for _ in range(2):
        while i < len(s) and s[i] == " ":
            i += 1
        if i >= len(s):
            return None
        if s[i] == "{":
            close = s.find("}", i)
            if close == -1 or "{" in s[i + 1 : close]:
                return None
            parts.append(s[i + 1 : close])
            i = close + 1
        elif s[i].isdigit():
            parts.append(s[i])
            i += 1
        else:
            return None
    if s[i:].strip():
        return None
    return parts[0], parts[1]


def normalize_number(s: str) -> Fraction | None:
    """The exact value of a plain number written by a person or a model, else None.

    Accepts thousands separators (`1,000`), a leading `$`/`\\$`, trailing unit words or percent
    (`18 dollars`, `5 cm`, `50%` -> 50), decimals, signs, `3/4`, `\\frac{3}{4}` (also `\\dfrac`,
    `\\tfrac`, `\\frac34`, `-\\frac12`), and `x = 5`. Anything else (exponents, expressions,
    more than 100 digits, very long strings) gives None; nothing is evaluated.
    """
    if not isinstance(s, str):
        if isinstance(s, bool) or not isinstance(s, (int, Fraction)):
            return None
        s = str(s)
    if len(s) > MAX_NUMBER_CHARS:
        return None
    s = s.strip()
    for junk in ("\\!", "\\,", "\\;", "\\:", "\\ ", "{,}", "\\left", "\\right"):
        s = s.replace(junk, "" if junk != "{,}" else ",")
    s = _VAR_EQ.sub("", s)
    s = s.strip().strip("$").strip()
    if s.startswith("\\text{") and s.endswith("}") and s.count("{") == 1:
        s = s[6:-1].strip()
    # trailing decorations: units in \text{}, degrees, percent, unit words
    for _ in range(3):
        before = s
        s = s.rstrip(" .")
        m = _TEXT_TAIL.search(s)
        if m and m.start() > 0:
            s = s[: m.start()]
        for tail in ("^{\\circ}", "^\\circ", "\u00b0", "\\%", "%", "percent"):
            if s.endswith(tail):
                s = s[: -len(tail)]
        m = _UNIT_TAIL.search(s)
        if m and m.start() > 0 and m.group(1).split()[0].lower() not in _NOT_UNITS:
            if s[: m.start()].rstrip()[-1:].isdigit() or s[: m.start()].rstrip()[-1:] == "}":
                s = s[: m.start()]
        s = s.strip()
        if s == before:
            break
    # sign, then currency
    neg = False
    while s[:1] in ("-", "+", "\u2212"):
        neg ^= s[0] != "+"
        s = s[1:].strip()
    for cur in ("\\$", "$"):
        if s.startswith(cur):
            s = s[len(cur) :].strip()
    while s[:1] in ("-", "+", "\u2212"):  # $-5
        neg ^= s[0] != "+"
        s = s[1:].strip()
    if not s:
        return None
    value: Fraction | None
    m = _FRAC_CMD.match(s)
    if m:
        parts = _frac_parts(s[m.end() :])
        if parts is None:
            return None
        num, den = _signed(parts[0]), _signed(parts[1])
        value = None if (num is None or den is None or den == 0) else num / den
    elif s.count("/") == 1:
        a, b = s.split("/")
        num, den = _signed(a), _signed(b)
        value = None if (num is None or den is None or den == 0) else num / den
    else:
        value = _plain(s)
    if value is None:
        return None
    return -value if neg else value


# ---------------------------------------------------------------------------------------------
# string normalisation
# ---------------------------------------------------------------------------------------------

_UNWRAP = ("\\text", "\\textbf", "\\textrm", "\\textnormal", "\\mathrm", "\\mathbf", "\\mbox", "\\boxed")


def _unwrap(s: str, commands: Sequence[str] = _UNWRAP) -> str:
    """Replace `\\cmd{X}` by `X` for formatting commands (brace-matched; strings are short)."""
    for _ in range(8):
        hit = False
        for cmd in commands:
            start = 0
            while True:
                i = s.find(cmd + "{", start)
                if i == -1:
                    break
                o = i + len(cmd)
                close = _brace_matches(s, {o}).get(o)
                if close is None:
                    start = o
                    continue
                s = s[:i] + s[o + 1 : close] + s[close + 1 :]
                hit = True
                start = i
        if not hit:
            break
    return s


def _normalize_text(s: str) -> str:
    if len(s) > MAX_VERIFY_CHARS:
        return s.strip()
    s = _unwrap(s)
    for a, b in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""),
                 ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\ ", ""), ("^{\\circ}", ""),
                 ("^\\circ", ""), ("\\%", ""), ("%", ""), ("\\$", ""), ("$", "")):
        s = s.replace(a, b)
    s = "".join(s.split())
    return s.rstrip(".")


def _choice(s: str) -> str | None:
    """`C`, `(C)`, `c` -> `C` (a multiple-choice letter)."""
    if len(s) == 3 and s[0] == "(" and s[2] == ")":
        s = s[1]
    if len(s) == 1 and s.isalpha() and s.isascii():
        return s.upper()
    return None

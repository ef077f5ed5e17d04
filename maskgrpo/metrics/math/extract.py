"""Finding the final answer in a completion or a gold solution.

Its own module because it is the part that reads the whole (untrusted, possibly huge) model text:
everything here is linear in the length of the text (braces matched by one scan with a stack,
never a regex or recursion), and the answer it returns is what the bounded checks then judge.
"""

from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_BRACES = re.compile(r"[{}]")
_ANSWER_IS = re.compile(r"the\s+(?:final\s+)?answer\s+is", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")


def _brace_matches(text: str, starts: set[int]) -> dict[int, int]:
    """For each opening-brace index in `starts`, the index of its matching `}` (if balanced).

    One left-to-right pass over the braces from the first start, with an explicit stack: linear
    time, no recursion. Escaped braces (`\\{`, `\\}`) are literal characters and are skipped.
    """
    if not starts:
        return {}
    stack: list[int] = []
    out: dict[int, int] = {}
    for m in _BRACES.finditer(text, min(starts)):
        i = m.start()
        if i > 0 and text[i - 1] == "\\":
            continue
        if text[i] == "{":
            stack.append(i)
        elif stack:
            o = stack.pop()
            if o in starts:
                out[o] = i
    return out


def _find_all(text: str, needle: str) -> list[int]:
    found, i = [], text.find(needle)
    while i != -1:
        found.append(i)
        i = text.find(needle, i + 1)
    return found


def _last_boxed(text: str) -> str | None:
    """Content of the last balanced `\\boxed{...}` / `\\fbox{...}` (or `\\boxed 5` form)."""
    brace_starts: set[int] = set()
    bare: list[tuple[int, str]] = []  # `\boxed 42` (no braces): (position, token)
    for cmd in _BOX_COMMANDS:
        for pos in _find_all(text, cmd):
            j = pos + len(cmd)
            if j < len(text) and text[j].isalpha():
                continue  # a longer command name, e.g. \boxedx
            k = j
            while k < len(text) and text[k] in " \t":
                k += 1
            if k < len(text) and text[k] == "{":
                brace_starts.add(k)
            elif k > j:  # `\boxed 42`: the next token
                end = k
                while end < len(text) and not text[end].isspace() and text[end] not in "$":
                    end += 1
                if end > k:
                    bare.append((pos, text[k:end]))
    matches = _brace_matches(text, brace_starts)
    best_pos, best = -1, None
    for o, c in matches.items():
        if o > best_pos:
            best_pos, best = o, text[o + 1 : c]
    for pos, token in bare:
        if pos > best_pos:
            best_pos, best = pos, token
    return best


def _clean(ans: str | None) -> str | None:
    """Strip surrounding whitespace, `$` and trailing periods; None when nothing is left.
    An escaped dollar (`\\$`) at the end belongs to the answer and is kept."""
    if ans is None:
        return None
    prev = None
    while prev != ans:
        prev = ans
        ans = ans.strip().lstrip("$")
        while ans.endswith("$") and not ans.endswith("\\$"):
            ans = ans[:-1]
        ans = ans.strip().rstrip(".")
    return ans or None


def _after_answer_is(text: str) -> str | None:
    last = None
    for last in _ANSWER_IS.finditer(text):
        pass
    if last is None:
        return None
    rest = text[last.end() :]
    nl = rest.find("\n")
    if nl != -1:
        rest = rest[:nl]
    rest = rest.lstrip(" \t:")
    if rest.startswith("$") and not rest.startswith("$$"):
        close = rest.find("$", 1)
        if close != -1:
            return rest[1:close]
    # cut at the end of the sentence: a period followed by whitespace (not a decimal point)
    for i, ch in enumerate(rest):
        if ch == "." and (i + 1 == len(rest) or rest[i + 1].isspace()):
            rest = rest[:i]
            break
    return rest


def extract_answer(text: str) -> tuple[str | None, str]:
    """The final answer in `text` and the rule that found it.

    Rules, in order: `boxed` (the last `\\boxed{}`/`\\fbox{}`), `####` (GSM8K), `answer_is`
    ("the answer is X", case-insensitive), `last_number`. Returns `(None, "none")` when no rule
    matches. Linear in the length of `text`.
    """
    if not isinstance(text, str) or not text:
        return None, "none"
    boxed = _clean(_last_boxed(text)) if ("\\boxed" in text or "\\fbox" in text) else None
    if boxed is not None:
        return boxed, "boxed"
    pos = text.rfind("####")
    if pos != -1:
        line = text[pos + 4 :].split("\n", 1)[0]
        ans = _clean(line)
        if ans is not None:
            return ans, "####"
    ans = _clean(_after_answer_is(text))
    if ans is not None:
        return ans, "answer_is"
    last = None
    for last in _NUMBER.finditer(text):
        pass
    if last is not None:
        return last.group(0), "last_number"
    return None, "none"


def gold_answer(gold: str) -> str | None:
    """The answer part of a gold: after GSM8K's last `####`, else a `\\boxed{}`, else all of it."""
    if not isinstance(gold, str):
        gold = str(gold)
    pos = gold.rfind("####")
    if pos != -1:
        return _clean(gold[pos + 4 :].split("\n", 1)[0])
    if "\\boxed" in gold or "\\fbox" in gold:
        boxed = _clean(_last_boxed(gold))
        if boxed is not None:
            return boxed
    return _clean(gold)

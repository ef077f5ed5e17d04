"""Math accuracy: extract a final answer from model text and judge it against a gold answer.

Extraction (`extract_answer`) tries, in order: the last `\\boxed{...}` / `\\fbox{...}` (braces
matched by a linear scan, never a regex), GSM8K's `#### N`, "the answer is X", and finally the
last number in the text.

Judging (`judge`) tries a light string normalisation, then exact rational arithmetic
(`normalize_number`, built on `fractions.Fraction`), then `math_verify` for LaTeX equivalence.
Model output is untrusted: nothing here calls `eval`/`exec`/`sympify` on it, and `math_verify`
(which uses sympy, and can hang on inputs such as `10^{10^{10^{10}}}`) only ever runs in a
separate, long-lived worker process that is killed and replaced when an answer takes longer
than `timeout` seconds. The bound therefore also holds when `judge` is called from a thread
other than the main one (where signal-based timeouts do not work).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from ..registry import metrics

__all__ = [
    "Judgement",
    "MathAccuracy",
    "extract_answer",
    "gold_answer",
    "judge",
    "judge_many",
    "normalize_number",
    "warmup",
]

# Answers longer than this are never handed to math_verify (nor normalised as LaTeX).
MAX_VERIFY_CHARS = 1000
# normalize_number refuses strings longer than this, and numbers with more digits than this.
MAX_NUMBER_CHARS = 400
MAX_DIGITS = 100
# How long a fresh worker may take to import sympy and math_verify (not part of `timeout`).
WORKER_STARTUP_TIMEOUT = 60.0


# ---------------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# math_verify in a worker process
# ---------------------------------------------------------------------------------------------

# The worker imports only math_verify (not this package, nor the caller's __main__), talks JSON
# lines over stdin/stdout, and protects itself: the protocol uses a private copy of stdout,
# fd 1 goes to /dev/null, memory is capped, and a CPU-time limit set before each request kills it
# even if the parent has died meanwhile.
_WORKER_SOURCE = r"""
import json, logging, os, sys
logging.disable(logging.CRITICAL)
proto = os.fdopen(os.dup(1), "w")
devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull, 1)
os.dup2(devnull, 2)
try:
    import resource
    mem = int(os.environ.get("MASKGRPO_VERIFY_MEMORY", str(3 << 30)))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
except Exception:
    resource = None
from math_verify import LatexExtractionConfig, parse, verify
CFG = [LatexExtractionConfig(boxed_match_priority=0)]

def cpu_bound(seconds):
    if resource is None:
        return
    try:
        r = resource.getrusage(resource.RUSAGE_SELF)
        used = r.ru_utime + r.ru_stime
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        soft = int(used + seconds) + 1
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except Exception:
        pass

proto.write('{"ready": true}\n')
proto.flush()
for line in sys.stdin:
    req = json.loads(line)
    cpu_bound(float(req.get("timeout", 1.0)) + 2.0)
    try:
        gold = parse("\\boxed{" + req["gold"] + "}", extraction_config=CFG, parsing_timeout=None)
        pred = parse("\\boxed{" + req["pred"] + "}", extraction_config=CFG, parsing_timeout=None)
        if not gold or not pred:
            res = {"ok": False, "why": "unparsable"}
        else:
            res = {"ok": bool(verify(gold, pred, timeout_seconds=None)), "why": ""}
    except MemoryError:
        res = {"ok": False, "why": "error: MemoryError"}
    except Exception as e:
        res = {"ok": False, "why": "error: " + type(e).__name__}
    res["id"] = req["id"]
    proto.write(json.dumps(res) + "\n")
    proto.flush()
"""


class _WorkerDied(Exception):
    pass


class _Worker:
    """One math_verify process and the read side of its protocol."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_SOURCE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,  # a Ctrl-C in the terminal goes to the caller only
        )
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.ready = False
        self.poller = select.poll()  # unlike select(), fine with descriptors above 1023
        self.poller.register(self.fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _readline(self, deadline: float) -> bytes | None:
        """One line, or None when `deadline` passes first; raises _WorkerDied on EOF."""
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not self.poller.poll(max(1, int(left * 1000))):
                continue  # re-check the deadline
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise _WorkerDied()
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def wait_ready(self, timeout: float) -> bool:
        if self.ready:
            return True
        try:
            line = self._readline(time.monotonic() + timeout)
        except _WorkerDied:
            return False
        self.ready = line is not None and b"ready" in line
        return self.ready

    def request(self, req_id: int, pred: str, gold: str, timeout: float) -> dict | None:
        """The worker's reply, or None on timeout; raises _WorkerDied if it died."""
        payload = json.dumps({"id": req_id, "pred": pred, "gold": gold, "timeout": timeout}) + "\n"
        try:
            self.proc.stdin.write(payload.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise _WorkerDied() from None
        deadline = time.monotonic() + timeout
        while True:
            line = self._readline(deadline)
            if line is None:
                return None
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            if reply.get("id") == req_id:
                return reply

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass


class _VerifierPool:
    """An active worker plus a warm spare, so a killed worker is replaced without a start-up wait.

    Requests are serialised by a lock (one worker answers one request at a time).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.active: _Worker | None = None
        self.spare: _Worker | None = None
        self.next_id = 0

    def _check_fork(self) -> None:
        if self.pid != os.getpid():  # inherited through fork: the pipes belong to the parent
            self.active = self.spare = None
            self.pid = os.getpid()

    def _ensure(self, with_spare: bool = True) -> _Worker:
        if self.active is not None and not self.active.alive():
            self.active.kill()
            self.active = None
        if self.active is None:
            if self.spare is not None and self.spare.alive():
                self.active, self.spare = self.spare, None
            else:
                if self.spare is not None:
                    self.spare.kill()
                    self.spare = None
                self.active = _Worker()
        if with_spare and (self.spare is None or not self.spare.alive()):
            if self.spare is not None:
                self.spare.kill()
            self.spare = _Worker()
        return self.active

    def _retire_active(self) -> None:
        if self.active is not None:
            self.active.kill()
            self.active = None
        self._ensure()  # promote the spare, start a new spare

    def warmup(self, timeout: float = WORKER_STARTUP_TIMEOUT) -> bool:
        with self.lock:
            self._check_fork()
            worker = self._ensure()
            ok = worker.wait_ready(timeout)
            if self.spare is not None:
                ok = self.spare.wait_ready(timeout) and ok
            return ok

    def verify(self, pred: str, gold: str, timeout: float) -> tuple[bool, str]:
        with self.lock:
            self._check_fork()
            for attempt in range(2):  # one retry if a worker was found dead
                worker = self._ensure()
                if not worker.wait_ready(WORKER_STARTUP_TIMEOUT):
                    self._retire_active()
                    if attempt == 0:
                        continue
                    return False, "verifier unavailable"
                self.next_id += 1
                try:
                    reply = worker.request(self.next_id, pred, gold, timeout)
                except _WorkerDied:
                    self._retire_active()
                    if attempt == 0:
                        continue
                    return False, "verifier crashed"
                if reply is None:
                    self._retire_active()
                    return False, "timeout"
                if reply.get("ok"):
                    return True, "math_verify"
                why = reply.get("why") or "not equivalent"
                return False, f"math_verify: {why}"
            return False, "verifier unavailable"

    def close(self) -> None:
        with self.lock:
            if self.pid != os.getpid():
                return
            for w in (self.active, self.spare):
                if w is not None:
                    w.kill()
            self.active = self.spare = None


_POOL = _VerifierPool()
atexit.register(_POOL.close)


def warmup(timeout: float = WORKER_STARTUP_TIMEOUT) -> bool:
    """Start the math_verify workers now (they otherwise start on the first LaTeX answer) and
    wait until they are ready. Returns False if they could not start in `timeout` seconds."""
    return _POOL.warmup(timeout)


def _verify_in_worker(pred: str, gold: str, timeout: float = 1.0) -> tuple[bool, str]:
    """math_verify(gold, pred) in the worker, bounded by `timeout` seconds: (equal, reason)."""
    return _POOL.verify(pred, gold, timeout)


# ---------------------------------------------------------------------------------------------
# judging
# ---------------------------------------------------------------------------------------------


@dataclass
class Judgement:
    """The verdict on one completion."""

    extracted: str | None
    correct: bool
    reason: str


def _unsafe_for_sympy(s: str) -> str | None:
    """A cheap screen for inputs that would make sympy compute huge numbers. The worker's time
    bound is the real guard; this only saves a worker restart on the obvious cases."""
    depth = max_depth = 0
    for ch in s:
        if ch == "{":
            depth += 1
            max_depth = max(max_depth, depth)
        elif ch == "}":
            depth -= 1
    if max_depth > 20:
        return "too deeply nested"
    if "**" in s:
        return "python operator"
    pos = s.find("^")
    while pos != -1:
        j = pos + 1
        while j < len(s) and s[j] == " ":
            j += 1
        if j < len(s) and s[j] == "{":
            close = _brace_matches(s, {j}).get(j)
            exponent = s[j + 1 : close] if close is not None else s[j + 1 :]
            after = close + 1 if close is not None else len(s)
        else:
            k = j
            while k < len(s) and s[k].isdigit():
                k += 1
            exponent, after = s[j : max(k, j + 1)], max(k, j + 1)
        if "^" in exponent or "\\uparrow" in exponent:
            return "nested exponent"
        if sum(ch.isdigit() for ch in exponent) > 5:
            return "huge exponent"
        rest = s[after:].lstrip(" })")
        if rest.startswith("^"):
            return "nested exponent"
        pos = s.find("^", pos + 1)
    return None


def judge(completion: str, gold: str, timeout: float = 1.0) -> Judgement:
    """Extract the final answer of `completion` and check it against `gold`.

    `gold` may be a GSM8K solution ending in `#### N`, a bare number, or a LaTeX answer. Checks,
    in order: normalised string equality (`exact`), exact rational equality (`numeric`), then
    `math_verify` in a worker process bounded by `timeout` seconds (reason `timeout` when it
    runs out). Safe on hostile text; returns in about `timeout` seconds at most.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    pred, rule = extract_answer(completion)
    if pred is None:
        return Judgement(None, False, "no answer")
    gold_ans = gold_answer(gold)
    if gold_ans is None:
        return Judgement(pred, False, "no gold answer")
    if pred == gold_ans:
        return Judgement(pred, True, "exact")
    if len(pred) > MAX_VERIFY_CHARS:
        return Judgement(pred, False, "too long")
    npred, ngold = _normalize_text(pred), _normalize_text(gold_ans)
    if npred and npred == ngold:
        return Judgement(pred, True, "exact")
    cpred, cgold = _choice(npred), _choice(ngold)
    if cpred is not None and cgold is not None:
        return Judgement(pred, cpred == cgold, "choice" if cpred == cgold else "wrong choice")
    if npred.isalpha() and ngold.isalpha() and npred.lower() == ngold.lower():
        return Judgement(pred, True, "exact")
    fpred, fgold = normalize_number(pred), normalize_number(gold_ans)
    if fpred is not None and fgold is not None:
        return Judgement(pred, fpred == fgold, "numeric" if fpred == fgold else "numeric mismatch")
    if len(gold_ans) > MAX_VERIFY_CHARS:
        return Judgement(pred, False, "gold too long")
    for s in (pred, gold_ans):
        unsafe = _unsafe_for_sympy(s)
        if unsafe is not None:
            return Judgement(pred, False, f"refused: {unsafe}")
    ok, reason = _verify_in_worker(pred, gold_ans, timeout)
    return Judgement(pred, ok, reason)


def judge_many(completions: Sequence[str], golds: Sequence[str], timeout: float = 1.0) -> list[Judgement]:
    """`judge` over a batch (pairs `completions[i]` with `golds[i]`)."""
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
    return [judge(c, g, timeout) for c, g in zip(completions, golds)]


# ---------------------------------------------------------------------------------------------
# the registered metric
# ---------------------------------------------------------------------------------------------


@metrics.register("math_accuracy")
class MathAccuracy:
    """Fraction of completions whose final answer equals the gold (numeric, then math-verify)."""

    def __init__(self, timeout: float = 1.0):
        if timeout <= 0:
            raise ValueError(f"math_accuracy: timeout must be positive, got {timeout}")
        self.timeout = timeout
        self.records: list[dict] = []

    def update(self, batch: dict) -> None:
        """Judge `batch["completions"]` against `batch["answers"]` and keep one record each."""
        completions, answers = batch["completions"], batch["answers"]
        for completion, answer, verdict in zip(completions, answers, judge_many(completions, answers, self.timeout)):
            self.records.append(
                {
                    "completion": completion,
                    "answer": answer,
                    "extracted": verdict.extracted,
                    "correct": verdict.correct,
                    "reason": verdict.reason,
                }
            )

    def compute(self) -> dict:
        n = len(self.records)
        correct = sum(1 for r in self.records if r["correct"])
        return {"accuracy": correct / n if n else float("nan"), "n": n}  # no samples: no score

    def reset(self) -> None:
        self.records = []

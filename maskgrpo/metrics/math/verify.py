"""math_verify (sympy) in a separate worker process, bounded in time and memory.

Its own module because sympy can hang or exhaust memory on inputs such as `10^{10^{10^{10}}}`:
it only ever runs here, in a long-lived worker that is killed and replaced (a warm spare takes
over) when an answer takes longer than its timeout, which works from any thread.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time

from .extract import _brace_matches

# How long a fresh worker may take to import sympy and math_verify (not part of `timeout`).
WORKER_STARTUP_TIMEOUT = 60.0

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

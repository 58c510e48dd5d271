#!/usr/bin/env python3
"""An independent KILN/1 client and conformance suite, written from docs/protocol.md alone.

Usage::

    python3 tests/doc_client.py HOST:PORT [--token T]

The first half of this file is a small client library: request encoding, an incremental answer
decoder (status line, frames with exact-length bodies, unknown channels ignored), and parsers for
`key: value` bodies and `problems` lines. The second half is a suite of checks run against a live
server; it prints one line per check, then `N passed, M failed`, and exits non-zero on any failure.

Standard library only; runs on Python 3.11.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

# ----------------------------------------------------------------------------------------------
# Client library
# ----------------------------------------------------------------------------------------------

PROTOCOL = "KILN/1"

#: Channels this client understands; every other channel is ignored, as the protocol requires.
KNOWN_CHANNELS = frozenset(
    {"info", "stats", "diagnostics", "problems", "stdout", "stderr", "artifact", "result"}
)

#: Longest status or frame line the decoder accepts before declaring the answer malformed.
MAX_LINE_BYTES = 64 * 1024


class ProtocolError(Exception):
    """The server's answer does not follow the protocol (or was cut short)."""


@dataclass(frozen=True)
class Status:
    """The answer's status line: either OK with a job id, or ERROR with a code and message."""

    ok: bool
    job_id: str = ""
    code: str = ""
    message: str = ""


@dataclass(frozen=True)
class Frame:
    """One frame: its channel, `KEY=VALUE` attributes, exact body, and arrival time."""

    channel: str
    attrs: dict[str, str]
    body: bytes
    arrived: float  # time.monotonic() when the frame's last byte was received


class KeyValues:
    """A parsed `key: value` body (`result`, `info`, `stats`); keys may repeat."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    @classmethod
    def parse(cls, body: bytes) -> KeyValues:
        """Parse lines of `key: value`, each ending in LF."""
        text = body.decode("utf-8")
        if text and not text.endswith("\n"):
            raise ProtocolError(f"key-value body does not end in LF: {text!r}")
        pairs = []
        for line in text.splitlines():
            key, sep, value = line.partition(": ")
            if not sep or not key:
                raise ProtocolError(f"not a `key: value` line: {line!r}")
            pairs.append((key, value))
        return cls(pairs)

    def get(self, key: str) -> str | None:
        """The first value of `key`, or None."""
        return next((v for k, v in self.pairs if k == key), None)

    def all(self, key: str) -> list[str]:
        """Every value of `key`, in order."""
        return [v for k, v in self.pairs if k == key]

    def __contains__(self, key: str) -> bool:
        return any(k == key for k, _ in self.pairs)


@dataclass(frozen=True)
class Problem:
    """One `problems` line: `LINE:COL: SEVERITY: MESSAGE`."""

    line: int
    col: int
    severity: str
    message: str


PROBLEM_RE = re.compile(r"^(\d+):(\d+): (error|warning|note): (.*)$")


def parse_problems(body: bytes) -> list[Problem]:
    """Parse a `problems` body, one problem a line."""
    problems = []
    for line in body.decode("utf-8").splitlines():
        m = PROBLEM_RE.match(line)
        if not m:
            raise ProtocolError(f"not a problems line: {line!r}")
        problems.append(Problem(int(m[1]), int(m[2]), m[3], m[4]))
    return problems


def parse_status(line: bytes) -> Status:
    """Parse a status line (without its LF)."""
    text = line.decode("utf-8")
    if text.startswith(f"{PROTOCOL} OK "):
        job_id = text[len(f"{PROTOCOL} OK ") :]
        if not job_id or " " in job_id:
            raise ProtocolError(f"bad job id in status line: {text!r}")
        return Status(ok=True, job_id=job_id)
    if text.startswith(f"{PROTOCOL} ERROR "):
        code, _, message = text[len(f"{PROTOCOL} ERROR ") :].partition(" ")
        return Status(ok=False, code=code, message=message)
    raise ProtocolError(f"not a status line: {text!r}")


def parse_frame_line(line: bytes) -> tuple[str, int, dict[str, str]]:
    """Split a frame line into channel, length and attributes."""
    parts = line.decode("utf-8").split(" ")
    if len(parts) < 2 or not parts[0] or not parts[1].isdigit():
        raise ProtocolError(f"not a frame line: {line!r}")
    attrs = {}
    for part in parts[2:]:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ProtocolError(f"bad frame attribute {part!r} in {line!r}")
        attrs[key] = value
    return parts[0], int(parts[1]), attrs


class AnswerDecoder:
    """Incremental answer decoder: feed it bytes as they arrive; it returns complete frames.

    The decoder never assumes anything about how the bytes are split: a frame line, or a body, may
    arrive in any number of pieces.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pending: tuple[str, int, dict[str, str]] | None = None
        self.status: Status | None = None
        self.done = False  # an ERROR status, or the `result` frame, has been decoded
        self.ignored: list[str] = []  # channels of frames skipped as unknown

    def feed(self, data: bytes, now: float) -> list[Frame]:
        """Add received bytes; return the known-channel frames they completed."""
        self._buf += data
        frames: list[Frame] = []
        while not self.done:
            if self.status is None:
                line = self._take_line()
                if line is None:
                    break
                self.status = parse_status(line)
                self.done = not self.status.ok
                continue
            if self._pending is None:
                line = self._take_line()
                if line is None:
                    break
                self._pending = parse_frame_line(line)
            channel, length, attrs = self._pending
            if len(self._buf) < length:
                break
            body = bytes(self._buf[:length])
            del self._buf[:length]
            self._pending = None
            if channel not in KNOWN_CHANNELS:
                self.ignored.append(channel)
                continue
            frames.append(Frame(channel, attrs, body, now))
            self.done = channel == "result"
        if self.done and self._buf:
            raise ProtocolError(f"bytes after the end of the answer: {bytes(self._buf[:64])!r}")
        return frames

    def _take_line(self) -> bytes | None:
        """Remove and return one LF-terminated line (without the LF), or None if incomplete."""
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > MAX_LINE_BYTES:
                raise ProtocolError("line too long")
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        if line.endswith(b"\r"):
            raise ProtocolError(f"server sent CR LF, the protocol says plain LF: {line!r}")
        return line


@dataclass
class Answer:
    """A complete answer: status, known frames in order, and the channels that were ignored."""

    status: Status
    frames: list[Frame] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def channel(self, name: str) -> list[Frame]:
        """All frames of one channel, in order."""
        return [f for f in self.frames if f.channel == name]

    def joined(self, name: str) -> bytes:
        """The concatenated bodies of one channel (e.g. all of stdout)."""
        return b"".join(f.body for f in self.channel(name))

    def kv(self, name: str) -> KeyValues:
        """The parsed `key: value` body of the single frame on channel `name`."""
        frames = self.channel(name)
        if len(frames) != 1:
            raise ProtocolError(f"expected one {name} frame, got {len(frames)}")
        return KeyValues.parse(frames[0].body)

    @property
    def result(self) -> KeyValues:
        """The parsed `result` frame."""
        return self.kv("result")


class AnswerStream:
    """A request in flight: read its status, then its frames as the server sends them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = AnswerDecoder()
        self._ready: list[Frame] = []

    def _receive(self) -> None:
        """Receive one chunk and decode it; raise ProtocolError at EOF before the answer ends."""
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            what = "status line" if self.decoder.status is None else "result frame"
            raise ProtocolError(f"connection closed before the {what}")
        self._ready += self.decoder.feed(data, time.monotonic())

    def status(self) -> Status:
        """Block until the status line has arrived and return it."""
        while self.decoder.status is None:
            self._receive()
        return self.decoder.status

    def frames(self) -> Iterator[Frame]:
        """Yield known frames as they arrive, up to and including `result`."""
        self.status()
        while True:
            while self._ready:
                yield self._ready.pop(0)
            if self.decoder.done:
                return
            self._receive()

    def collect(self) -> Answer:
        """Read the rest of the answer."""
        status = self.status()
        frames = list(self.frames())
        return Answer(status, frames, list(self.decoder.ignored))

    def close(self) -> None:
        """Close the connection (which cancels the job)."""
        self.sock.close()


def encode_request(
    intent: str,
    lang: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    source: bytes = b"",
    stdin: bytes = b"",
    eol: bytes = b"\n",
) -> bytes:
    """Encode a request. `Source-Length` (with a LANG) and `Stdin-Length` are added here."""
    all_headers = list(headers)
    if lang is not None:
        all_headers.append(("Source-Length", str(len(source))))
    if stdin:
        all_headers.append(("Stdin-Length", str(len(stdin))))
    lines = [f"{PROTOCOL} {intent}" + (f" {lang}" if lang is not None else "")]
    for name, value in all_headers:
        if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in value):
            raise ValueError(f"header {name} has a control character")
        lines.append(f"{name}: {value}")
    head = eol.join(line.encode("utf-8") for line in lines) + eol + eol
    return head + source + stdin


class KilnClient:
    """A KILN/1 client for one server; each request uses its own connection."""

    def __init__(self, host: str, port: int, token: str | None = None, timeout: float = 10.0):
        self.host = host
        self.port = port
        self.token = token
        self.timeout = timeout

    def token_headers(self) -> list[tuple[str, str]]:
        """The `Token` header, if this client has a token."""
        return [("Token", self.token)] if self.token else []

    def send(self, data: bytes, timeout: float | None = None) -> AnswerStream:
        """Connect and send raw request bytes; return the answer stream.

        A server may refuse before reading the whole request, so a failed send is not an error:
        the status line is read regardless.
        """
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.settimeout(timeout if timeout is not None else self.timeout)
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return AnswerStream(sock)

    def exchange(self, data: bytes, timeout: float | None = None) -> Answer:
        """Send raw request bytes and read the whole answer."""
        stream = self.send(data, timeout)
        try:
            return stream.collect()
        finally:
            stream.close()

    def start(
        self,
        intent: str,
        lang: str | None = None,
        source: bytes = b"",
        stdin: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
    ) -> AnswerStream:
        """Send a request (with the token, if any) and return its answer stream."""
        data = encode_request(intent, lang, [*self.token_headers(), *headers], source, stdin)
        return self.send(data, timeout)

    def request(
        self,
        intent: str,
        lang: str | None = None,
        source: bytes = b"",
        stdin: bytes = b"",
        headers: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
    ) -> Answer:
        """Send a request and read the whole answer."""
        stream = self.start(intent, lang, source, stdin, headers, timeout)
        try:
            return stream.collect()
        finally:
            stream.close()


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------

Check = Callable[[KilnClient], None]
CHECKS: list[tuple[str, Check]] = []


def check(name: str) -> Callable[[Check], Check]:
    """Register a check under a name; checks run in registration order."""

    def register(fn: Check) -> Check:
        CHECKS.append((name, fn))
        return fn

    return register


def expect(condition: bool, message: str) -> None:
    """Fail the current check with `message` unless `condition` holds."""
    if not condition:
        raise AssertionError(message)


def expect_ok(answer: Answer, verdict: str) -> KeyValues:
    """Expect an OK status and a given verdict; return the result."""
    expect(answer.status.ok, f"expected OK, got ERROR {answer.status.code} {answer.status.message}")
    result = answer.result
    expect(result.get("verdict") == verdict, f"verdict {result.get('verdict')!r} != {verdict!r}")
    return result


def expect_error(answer: Answer, code: str) -> None:
    """Expect an ERROR status with a given code and a non-empty message."""
    status = answer.status
    expect(not status.ok, f"expected ERROR {code}, got OK with {answer.frames}")
    expect(status.code == code, f"expected ERROR {code}, got {status.code}: {status.message}")
    expect(bool(status.message), "ERROR without a message")


def raw(
    client: KilnClient, intent_line: str, headers: Sequence[str] = (), body: bytes = b""
) -> bytes:
    """Build a hand-written (possibly malformed) request, with the client's token if any."""
    lines = [intent_line, *(f"{n}: {v}" for n, v in client.token_headers()), *headers]
    return "".join(line + "\n" for line in lines).encode("utf-8") + b"\n" + body


HELLO = b'print("hello, world")\n'
ENDLESS = b"while True:\n    pass\n"

# --- the decoder itself, against the document's own examples (no server needed) ---------------

DOC_RUN_EXAMPLE = (
    b"KILN/1 OK 1f2e-17\nstdout 13\nhello, world\nresult 80\nverdict: ok\nexit-code: 0\n"
    b"compile-ms: 21\nrun-ms: 19\ncpu-ms: 16\nmax-rss-kib: 9012\n"
)


@check("decoder: doc RUN example, fed one byte at a time")
def check_decoder_bytewise(_: KilnClient) -> None:
    decoder = AnswerDecoder()
    frames = [
        frame
        for i in range(len(DOC_RUN_EXAMPLE))
        for frame in decoder.feed(DOC_RUN_EXAMPLE[i : i + 1], 0)
    ]
    expect(decoder.done and decoder.status == Status(ok=True, job_id="1f2e-17"), "status/done")
    expect([f.channel for f in frames] == ["stdout", "result"], f"channels {frames}")
    expect(frames[0].body == b"hello, world\n", "stdout body")
    expect(KeyValues.parse(frames[1].body).get("max-rss-kib") == "9012", "result body")


@check("decoder: unknown channels and keepalive ignored, binary bodies exact")
def check_decoder_unknown(_: KilnClient) -> None:
    data = (
        b"KILN/1 OK j-1\nkeepalive 0\nfuture 6 x=1 y=2\na\nb\nc\n"
        b"stdout 3\n\x00\n\xffartifact 2 name=a\n\n\nresult 12\nverdict: ok\n"
    )
    decoder = AnswerDecoder()
    frames = decoder.feed(data, 0)
    expect([f.channel for f in frames] == ["stdout", "artifact", "result"], f"channels {frames}")
    expect(decoder.ignored == ["keepalive", "future"], f"ignored {decoder.ignored}")
    expect(frames[0].body == b"\x00\n\xff" and frames[1].body == b"\n\n", "exact bodies")
    expect(frames[1].attrs == {"name": "a"}, "attributes")


@check("decoder: doc ERROR example")
def check_decoder_error(_: KilnClient) -> None:
    line = (
        b"KILN/1 ERROR too-large Source-Length is 2000000"
        b" but this server takes at most 1048576 bytes\n"
    )
    decoder = AnswerDecoder()
    decoder.feed(line, 0)
    status = decoder.status
    assert decoder.done and status is not None, "done after ERROR"
    expect(status.code == "too-large", "code")
    expect(status.message.startswith("Source-Length is 2000000"), "message")


# --- simple intents ---------------------------------------------------------------------------


@check("PING -> pong")
def check_ping(client: KilnClient) -> None:
    answer = client.request("PING")
    expect_ok(answer, "pong")
    expect([f.channel for f in answer.frames] == ["result"], "only a result frame")


@check("INFO describes the server")
def check_info(client: KilnClient) -> None:
    answer = client.request("INFO")
    expect_ok(answer, "ok")
    expect([f.channel for f in answer.frames] == ["info", "result"], "info then result")
    info = answer.kv("info")
    expect(info.get("protocol") == "1", f"protocol {info.get('protocol')!r}")
    expect((info.get("server") or "").startswith("kiln "), f"server {info.get('server')!r}")
    expect(info.get("model") in ("pool", "fork"), f"model {info.get('model')!r}")
    expect((info.get("workers") or "").isdigit(), f"workers {info.get('workers')!r}")
    expect(info.get("sandbox") in ("bwrap", "none"), f"sandbox {info.get('sandbox')!r}")
    expect(info.get("token") in ("required", "none"), f"token {info.get('token')!r}")
    for key in (
        "max-source-bytes", "max-stdin-bytes", "time-limit-ms", "max-time-limit-ms",
        "cpu-limit-ms", "memory-limit-mib", "max-memory-limit-mib", "output-limit-bytes",
        "file-size-limit-bytes", "process-limit", "header-timeout-ms", "body-timeout-ms",
    ):  # fmt: skip
        expect((info.get(key) or "").isdigit(), f"{key} {info.get(key)!r}")
    python = [v for v in info.all("language") if v.startswith("python ")]
    languages = info.all("language")
    expect(len(python) == 1 and len(python[0].split(" ", 2)) == 3, f"languages {languages}")


STATS_KEYS = (
    "accepted", "served", "busy", "timeouts", "bad-requests", "too-large", "unauthorized",
    "unsupported-language", "unavailable", "internal", "dropped", "accept-errors", "cancelled",
    "active", "peak-active", "queued", "workers", "uptime-ms",
)  # fmt: skip


def stats(client: KilnClient) -> KeyValues:
    """Fetch the server's counters."""
    answer = client.request("STATS")
    expect_ok(answer, "ok")
    return answer.kv("stats")


@check("STATS has every documented counter")
def check_stats(client: KilnClient) -> None:
    counters = stats(client)
    for key in STATS_KEYS:
        expect((counters.get(key) or "").isdigit(), f"{key} {counters.get(key)!r}")
    expect(int(counters.get("accepted") or 0) >= 1, "accepted counts this connection")


# --- running programs -------------------------------------------------------------------------


@check("RUN python hello world")
def check_run_hello(client: KilnClient) -> None:
    answer = client.request("RUN", "python", HELLO)
    result = expect_ok(answer, "ok")
    expect(answer.joined("stdout") == b"hello, world\n", f"stdout {answer.joined('stdout')!r}")
    expect(result.get("exit-code") == "0", f"exit-code {result.get('exit-code')!r}")
    for key in ("compile-ms", "run-ms", "cpu-ms", "max-rss-kib"):
        expect((result.get(key) or "").isdigit(), f"{key} {result.get(key)!r}")


@check("RUN with stdin and Arg headers (doc example)")
def check_run_stdin_args(client: KilnClient) -> None:
    source = b"import sys; print(sys.argv[1:], input())\n"
    answer = client.request(
        "RUN", "python", source, b"world\n", [("Arg", "--shout"), ("Arg", "two words")]
    )
    expect_ok(answer, "ok")
    out = answer.joined("stdout")
    expect(out == b"['--shout', 'two words'] world\n", f"stdout {out!r}")


@check("RUN passes binary stdin and stdout through untouched")
def check_run_binary(client: KilnClient) -> None:
    data = bytes(range(256)) * 4
    source = b"import sys; sys.stdout.buffer.write(sys.stdin.buffer.read()[::-1])\n"
    answer = client.request("RUN", "python", source, data)
    expect_ok(answer, "ok")
    expect(answer.joined("stdout") == data[::-1], "stdout differs from reversed stdin")


@check("RUN with non-zero exit -> runtime-error + exit-code")
def check_run_exit_code(client: KilnClient) -> None:
    source = b"import sys\nprint('bye', file=sys.stderr)\nsys.exit(3)\n"
    answer = client.request("RUN", "python", source)
    result = expect_ok(answer, "runtime-error")
    expect(result.get("exit-code") == "3", f"exit-code {result.get('exit-code')!r}")
    expect(answer.joined("stderr") == b"bye\n", f"stderr {answer.joined('stderr')!r}")


@check("RUN streams output as the program writes it")
def check_streaming(client: KilnClient) -> None:
    source = (
        b"import time\nprint('first', flush=True)\ntime.sleep(1)\nprint('second', flush=True)\n"
    )
    stream = client.start("RUN", "python", source, timeout=15)
    try:
        expect(stream.status().ok, f"status {stream.status()}")
        stdout = [f for f in stream.frames() if f.channel == "stdout"]
    finally:
        stream.close()
    expect(b"".join(f.body for f in stdout) == b"first\nsecond\n", f"stdout {stdout}")
    first = next(f for f in stdout if b"first" in f.body)
    second = next(f for f in stdout if b"second" in f.body)
    gap = second.arrived - first.arrived
    expect(gap > 0.5, f"the two lines arrived {gap:.3f} s apart")


@check("RUN with Time-Limit-Ms on an endless loop -> time-limit")
def check_time_limit(client: KilnClient) -> None:
    started = time.monotonic()
    answer = client.request(
        "RUN", "python", ENDLESS, headers=[("Time-Limit-Ms", "500")], timeout=15
    )
    elapsed = time.monotonic() - started
    result = expect_ok(answer, "time-limit")
    expect(bool(result.get("message")), "a time-limit result names the limit in `message`")
    expect(elapsed < 5, f"took {elapsed:.1f} s for a 500 ms limit")


# --- checking and building --------------------------------------------------------------------


@check("CHECK syntax error (doc example) -> compile-error, problems 1:5")
def check_syntax_error(client: KilnClient) -> None:
    answer = client.request("CHECK", "python", b"x = (\n", headers=[("File-Name", "hello.py")])
    expect_ok(answer, "compile-error")
    expect([f.channel for f in answer.frames] == ["diagnostics", "problems", "result"], "frames")
    diagnostics = answer.joined("diagnostics")
    expect(b"hello.py" in diagnostics, f"diagnostics {diagnostics!r}")
    problems = parse_problems(answer.joined("problems"))
    expect(len(problems) >= 1, "at least one problem")
    p = problems[0]
    expect((p.line, p.col, p.severity) == (1, 5, "error"), f"problem {p}")


@check("CHECK problem column counts characters, on line 2")
def check_problem_column(client: KilnClient) -> None:
    source = "print('ok')\ns = 'é'; x = (\n".encode()  # '(' is character 14, byte 15 of line 2
    answer = client.request("CHECK", "python", source)
    expect_ok(answer, "compile-error")
    problems = parse_problems(answer.joined("problems"))
    where = [(p.line, p.col) for p in problems]
    expect(where[:1] == [(2, 14)], f"problems {problems}")


@check("CHECK clean source -> ok, no problems")
def check_clean(client: KilnClient) -> None:
    answer = client.request("CHECK", "python", HELLO)
    expect_ok(answer, "ok")
    expect(not answer.channel("problems") and not answer.channel("stdout"), "nothing but result")


@check("BUILD python -> artifact main.pyc with .pyc magic")
def check_build(client: KilnClient) -> None:
    answer = client.request("BUILD", "python", HELLO)
    expect_ok(answer, "ok")
    artifacts = answer.channel("artifact")
    expect(len(artifacts) == 1, f"{len(artifacts)} artifact frames")
    artifact = artifacts[0]
    expect(artifact.attrs.get("name") == "main.pyc", f"attributes {artifact.attrs}")
    # A .pyc starts with a 2-byte version number then b"\r\n", then flags, then 8 more bytes.
    expect(len(artifact.body) > 16 and artifact.body[2:4] == b"\r\n", f"{artifact.body[:16]!r}")


@check("BUILD python names the artifact after File-Name's safe base name")
def check_build_file_name(client: KilnClient) -> None:
    answer = client.request("BUILD", "python", HELLO, headers=[("File-Name", "../../hello.py")])
    expect_ok(answer, "ok")
    name = answer.channel("artifact")[0].attrs.get("name")
    expect(name == "hello.pyc", f"artifact name {name!r}")


# --- line ends and case -----------------------------------------------------------------------


@check("CR LF line ends are accepted")
def check_crlf(client: KilnClient) -> None:
    data = encode_request("RUN", "python", client.token_headers(), HELLO, eol=b"\r\n")
    answer = client.exchange(data)
    expect_ok(answer, "ok")
    expect(answer.joined("stdout") == b"hello, world\n", f"stdout {answer.joined('stdout')!r}")


@check("lower-case intent and upper-case LANG are accepted")
def check_lower_case(client: KilnClient) -> None:
    expect_ok(client.request("ping"), "pong")
    answer = client.request("run", "Python", HELLO)
    expect_ok(answer, "ok")


@check("header names are case-insensitive, spaces around values trimmed")
def check_header_case(client: KilnClient) -> None:
    body = HELLO + b"in\n"
    data = raw(
        client,
        "KILN/1 RUN python",
        [f"source-length:{len(HELLO)}", "STDIN-LENGTH: \t3 \t", "X-Unknown-Header: ignored"],
        body,
    )
    expect_ok(client.exchange(data), "ok")


# --- refusals ---------------------------------------------------------------------------------


def refusal(name: str, code: str, build: Callable[[KilnClient], bytes]) -> None:
    """Register a check that a malformed request is refused with ERROR `code`."""

    def run(client: KilnClient) -> None:
        expect_error(client.exchange(build(client)), code)

    check(f"refused: {name} -> {code}")(run)


refusal("garbage bytes", "bad-request", lambda c: b"\x16\x03\x01\x02\x00\x01\xfc\x03\x03\n\n")
refusal("HTTP request", "bad-request", lambda c: b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
refusal("wrong version", "bad-request", lambda c: raw(c, "KILN/2 PING"))
refusal("unknown intent", "bad-request", lambda c: raw(c, "KILN/1 FROBNICATE"))
refusal(
    "RUN without a language", "bad-request",
    lambda c: raw(c, "KILN/1 RUN", ["Source-Length: 1"], b"x"),
)  # fmt: skip
refusal("PING with a language", "bad-request", lambda c: raw(c, "KILN/1 PING python"))
refusal("LANG without Source-Length", "bad-request", lambda c: raw(c, "KILN/1 CHECK python"))
refusal(
    "negative Source-Length", "bad-request",
    lambda c: raw(c, "KILN/1 RUN python", ["Source-Length: -1"]),
)  # fmt: skip
refusal(
    "non-numeric Source-Length", "bad-request",
    lambda c: raw(c, "KILN/1 RUN python", ["Source-Length: twelve"]),
)  # fmt: skip
refusal(
    "Source-Length over max-source-bytes", "too-large",
    lambda c: raw(c, "KILN/1 RUN python", ["Source-Length: 2000000"]),
)  # fmt: skip
refusal(
    "huge Source-Length (overflows 64 bits)", "too-large",
    lambda c: raw(c, "KILN/1 RUN python", ["Source-Length: 99999999999999999999999999"]),
)  # fmt: skip
refusal(
    "duplicate Source-Length", "bad-request",
    lambda c: raw(c, "KILN/1 RUN python", ["Source-Length: 1", "Source-Length: 1"], b"1"),
)  # fmt: skip
refusal(
    "Stdin-Length on CHECK", "bad-request",
    lambda c: raw(c, "KILN/1 CHECK python", ["Source-Length: 1", "Stdin-Length: 1"], b"12"),
)  # fmt: skip
refusal(
    "header block over 16 KiB", "too-large",
    lambda c: raw(c, "KILN/1 PING", [f"X-Pad: {'a' * 17000}"]),
)  # fmt: skip
refusal(
    "more than 64 header lines", "too-large",
    lambda c: raw(c, "KILN/1 PING", [f"X-Pad-{i}: 1" for i in range(70)]),
)  # fmt: skip
refusal(
    "control character in a header value", "bad-request",
    lambda c: raw(c, "KILN/1 RUN python", ["File-Name: a\x01b.py", "Source-Length: 1"], b"1"),
)  # fmt: skip
refusal(
    "NUL byte in the source", "bad-request",
    lambda c: raw(c, "KILN/1 RUN python", ["Source-Length: 7"], b"x = 1\x00\n"),
)  # fmt: skip
refusal(
    "body longer than announced", "bad-request",
    lambda c: raw(c, "KILN/1 RUN python", ["Source-Length: 2"], b"1\nextra bytes\n"),
)  # fmt: skip


@check("refused: header not finished within header-timeout-ms -> timeout")
def check_header_timeout(client: KilnClient) -> None:
    limit_ms = int(client.request("INFO").kv("info").get("header-timeout-ms") or 5000)
    started = time.monotonic()
    stream = client.send(b"KILN/1 PING\n", timeout=limit_ms / 1000 + 5)
    try:
        status = stream.status()
    finally:
        stream.close()
    elapsed = time.monotonic() - started
    expect_error(Answer(status), "timeout")
    expect(elapsed >= limit_ms / 1000 - 0.1, f"answered after {elapsed:.2f} s, before the timeout")


@check("refused: unsupported language -> unsupported-language, listing python")
def check_unsupported(client: KilnClient) -> None:
    answer = client.exchange(raw(client, "KILN/1 RUN cobol", ["Source-Length: 1"], b"x"))
    expect_error(answer, "unsupported-language")
    expect("python" in answer.status.message, f"message {answer.status.message!r}")


@check("server still serves after the refusals")
def check_alive(client: KilnClient) -> None:
    expect_ok(client.request("PING"), "pong")
    expect(int(stats(client).get("bad-requests") or 0) > 0, "bad-requests counter is zero")


# --- cancellation -----------------------------------------------------------------------------


@check("closing the connection cancels the job; server answers promptly")
def check_cancel(client: KilnClient) -> None:
    info = client.request("INFO").kv("info")
    workers = int(info.get("workers") or 1)
    before = int(stats(client).get("cancelled") or 0)
    # Occupy every worker with an endless program, then walk away from all of them.
    busy = b"print('go', flush=True)\n" + ENDLESS
    streams = [
        client.start("RUN", "python", busy, headers=[("Time-Limit-Ms", "60000")])
        for _ in range(workers)
    ]
    for stream in streams:
        expect(stream.status().ok, f"status {stream.status()}")
        next(f for f in stream.frames() if f.channel == "stdout")  # the program is running
    for stream in streams:
        stream.close()
    started = time.monotonic()
    expect_ok(client.request("PING", timeout=3), "pong")
    answer = client.request("RUN", "python", HELLO, timeout=10)
    expect_ok(answer, "ok")
    elapsed = time.monotonic() - started
    expect(elapsed < 5, f"a RUN after cancelling took {elapsed:.1f} s: the workers were not freed")
    deadline = time.monotonic() + 5
    while int(stats(client).get("cancelled") or 0) < before + workers:
        expect(time.monotonic() < deadline, "the cancelled counter did not grow")
        time.sleep(0.1)


# ----------------------------------------------------------------------------------------------
# Runner
# ----------------------------------------------------------------------------------------------


def run_checks(client: KilnClient) -> int:
    """Run every check, print one line each and a summary; return the number of failures."""
    passed = failed = 0
    for name, fn in CHECKS:
        started = time.monotonic()
        try:
            fn(client)
        except (AssertionError, ProtocolError, OSError) as e:
            failed += 1
            print(f"FAIL  {name}: {type(e).__name__}: {e}", flush=True)
        except Exception:  # a bug in a check is still a failure, not a crash of the suite
            failed += 1
            print(f"FAIL  {name}: unexpected exception", flush=True)
            traceback.print_exc()
        else:
            passed += 1
            print(f"ok    {name} ({time.monotonic() - started:.2f} s)", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return failed


def main(argv: Sequence[str]) -> int:
    """Parse the command line and run the suite."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="HOST:PORT of a Kiln server")
    parser.add_argument("--token", help="the server's token, if it requires one")
    args = parser.parse_args(argv)
    host, _, port = args.address.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"not HOST:PORT: {args.address}")
    client = KilnClient(host, int(port), args.token)
    return 1 if run_checks(client) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

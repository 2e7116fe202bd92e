#!/usr/bin/env python3
"""fake-upstream: a fake OpenAI-compatible model server for llamaswap-docker tests.

Stands in for llama-server / vLLM.  Standard library only (runs on Debian's
python3 without any third-party packages).

Every flag can also be set through an environment variable (the flag wins):

  --host            FAKE_HOST            bind address (default 0.0.0.0)
  --port            FAKE_PORT            bind port (default 8080)
  --mode            FAKE_MODE            llama | vllm (default llama)
  --model-name      FAKE_MODEL_NAME      model id reported/echoed (default fake-model)
  --load-delay      FAKE_LOAD_DELAY      seconds until "ready" (default 0)
  --load-style      FAKE_LOAD_STYLE      503 | refuse (default 503)
  --tokens          FAKE_TOKENS          tokens per generation (default 8)
  --token-rate      FAKE_TOKEN_RATE      tokens/second, 0 = unlimited (default 0)
  --exit-at-start   FAKE_EXIT_AT_START   exit with CODE before listening
  --exit-after      FAKE_EXIT_AFTER      exit after N inference responses
  --exit-code       FAKE_EXIT_CODE       exit code for --exit-after (default 1)
  --hang            FAKE_HANG=1          inference requests never answer
  --ignore-sigterm  FAKE_IGNORE_SIGTERM=1  ignore SIGTERM/SIGINT (only SIGKILL stops it)
  --api-key         FAKE_API_KEY         require "Authorization: Bearer KEY" (like llama-server's
                                         --api-key: /health and /debug/* stay open)
  --enable-sleep-mode                    vLLM's sleep mode: POST /sleep?level=N, POST /wake_up,
                                         GET /is_sleeping (mode vllm, and like vLLM only with
                                         VLLM_SERVER_DEV_MODE=1 in the environment)
  --wake-delay      FAKE_WAKE_DELAY      seconds /wake_up takes (default 0.2)
  --wake-fails      FAKE_WAKE_FAILS=1    /wake_up answers 500 and the server stays asleep
"""

import argparse
import base64
import hashlib
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOSTNAME = socket.gethostname()
READ_PIECE = 1 << 20  # read request bodies in 1 MiB pieces
SNIFF_LIMIT = 1 << 20  # bodies of unknown type: keep at most this much


# --------------------------------------------------------------------------
# logging (os.write: atomic per line, safe from signal handlers and threads)
# --------------------------------------------------------------------------

def log(msg):
    line = "%s fake-upstream[%d] %s\n" % (
        time.strftime("%H:%M:%S"), os.getpid(), msg)
    try:
        os.write(2, line.encode("utf-8", "replace"))
    except OSError:
        pass


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------

def _env(name, default=None):
    v = os.environ.get(name)
    if v is None or v.strip() == "":
        return default
    return v.strip()


def _env_bool(name):
    v = _env(name, "")
    return v.lower() in ("1", "true", "yes", "on", "y")


def _env_int(name, default=None):
    v = _env(name)
    if v is None:
        return default
    try:
        return int(v)
    except ValueError:
        sys.stderr.write("invalid integer in %s=%r\n" % (name, v))
        sys.exit(2)


def _env_float(name, default):
    v = _env(name)
    if v is None:
        return default
    try:
        return float(v)
    except ValueError:
        sys.stderr.write("invalid number in %s=%r\n" % (name, v))
        sys.exit(2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Fake OpenAI-compatible model server (llama-server / vLLM stand-in)")
    p.add_argument("--host", default=_env("FAKE_HOST", "0.0.0.0"))
    p.add_argument("--port", type=int, default=_env_int("FAKE_PORT", 8080))
    p.add_argument("--mode", choices=["llama", "vllm"],
                   default=(_env("FAKE_MODE", "llama") or "llama").lower())
    p.add_argument("--model-name", default=_env("FAKE_MODEL_NAME", "fake-model"))
    p.add_argument("--load-delay", type=float, default=_env_float("FAKE_LOAD_DELAY", 0.0))
    p.add_argument("--load-style", choices=["503", "refuse"],
                   default=(_env("FAKE_LOAD_STYLE", "503") or "503").lower())
    p.add_argument("--tokens", type=int, default=_env_int("FAKE_TOKENS", 8))
    p.add_argument("--token-rate", type=float, default=_env_float("FAKE_TOKEN_RATE", 0.0))
    p.add_argument("--exit-at-start", type=int, metavar="CODE",
                   default=_env_int("FAKE_EXIT_AT_START"))
    p.add_argument("--exit-after", type=int, metavar="N",
                   default=_env_int("FAKE_EXIT_AFTER"))
    p.add_argument("--exit-code", type=int, default=_env_int("FAKE_EXIT_CODE", 1))
    p.add_argument("--hang", action="store_true", default=_env_bool("FAKE_HANG"))
    p.add_argument("--ignore-sigterm", action="store_true",
                   default=_env_bool("FAKE_IGNORE_SIGTERM"))
    p.add_argument("--api-key", default=_env("FAKE_API_KEY", "") or None)
    p.add_argument("--enable-sleep-mode", action="store_true")
    p.add_argument("--wake-delay", type=float, default=_env_float("FAKE_WAKE_DELAY", 0.2))
    p.add_argument("--wake-fails", action="store_true", default=_env_bool("FAKE_WAKE_FAILS"))
    args = p.parse_args(argv)
    if args.tokens < 0:
        p.error("--tokens must be >= 0")
    if args.token_rate < 0:
        p.error("--token-rate must be >= 0")
    if args.exit_after is not None and args.exit_after <= 0:
        args.exit_after = None
    return args


ARGS = None  # set in main()


def sleep_mode():
    """vLLM serves its sleep endpoints only with --enable-sleep-mode and in dev mode."""
    return (ARGS.mode == "vllm" and ARGS.enable_sleep_mode
            and os.environ.get("VLLM_SERVER_DEV_MODE") == "1")


# --------------------------------------------------------------------------
# shared state
# --------------------------------------------------------------------------

class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.ready = False
        self.sleeping = False
        self.sleep_level = 0
        self.sleep_calls = 0
        self.wake_calls = 0
        self.requests = 0           # inference requests started
        self.served = 0             # inference responses fully written
        self.rejected = 0           # inference requests answered 503 (loading/sleeping)
        self.cancelled_streams = 0
        self.in_flight = 0
        self.last_headers = {}
        self.last_body_bytes = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.started_at = time.time()


STATE = State()


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def count_words(obj):
    """Rough token count: whitespace words in any text found in obj."""
    if obj is None:
        return 0
    if isinstance(obj, str):
        return len(obj.split())
    if isinstance(obj, (list, tuple)):
        return sum(count_words(x) for x in obj)
    if isinstance(obj, dict):
        n = 0
        for key in ("content", "text", "prompt", "input", "system"):
            if key in obj:
                n += count_words(obj[key])
        return n
    return 0


def chat_prompt_tokens(body):
    return max(1, count_words(body.get("messages")))


def anthropic_prompt_tokens(body):
    return max(1, count_words(body.get("system")) + count_words(body.get("messages")))


def as_limit(value):
    """Return a non-negative int limit or None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = int(value)
    except (TypeError, ValueError):
        return None
    if v < 0:
        return None
    return v


def n_tokens(limit):
    """(number of tokens to generate, hit_limit)."""
    configured = ARGS.tokens
    if limit is not None and limit <= configured:
        return limit, True
    return configured, False


def token_text(i):
    return "tok%d " % i


def embedding_for(text):
    digest = hashlib.sha256(text.encode("utf-8", "replace")).digest()
    vals = []
    for i in range(8):
        (u,) = struct.unpack(">I", digest[i * 4:i * 4 + 4])
        vals.append(round(u / 4294967295.0 * 2.0 - 1.0, 6))
    return vals


def llama_timings(prompt_n, predicted_n, predicted_ms):
    prompt_ms = max(0.001, prompt_n * 0.05)
    predicted_ms = max(0.001, predicted_ms)
    return {
        "prompt_n": prompt_n,
        "prompt_ms": round(prompt_ms, 3),
        "prompt_per_token_ms": round(prompt_ms / max(1, prompt_n), 3),
        "prompt_per_second": round(prompt_n / (prompt_ms / 1000.0), 3),
        "predicted_n": predicted_n,
        "predicted_ms": round(predicted_ms, 3),
        "predicted_per_token_ms": round(predicted_ms / max(1, predicted_n), 3),
        "predicted_per_second": round(predicted_n / (predicted_ms / 1000.0), 3),
    }


def find_multipart_field(body, content_type, name):
    """Find a small text field in a multipart/form-data body without splitting it."""
    boundary = None
    for part in content_type.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        if k.strip().lower() == "boundary":
            boundary = v.strip().strip('"')
    if not boundary or not body:
        return None
    delim = b"\r\n--" + boundary.encode("latin-1")
    for needle in (('name="%s"' % name).encode(), ("name=%s" % name).encode()):
        start = 0
        while True:
            idx = body.find(needle, start)
            if idx < 0:
                break
            start = idx + len(needle)
            # make sure the needle lies inside a Content-Disposition header line
            line_start = body.rfind(b"\n", 0, idx) + 1
            if b"content-disposition" not in bytes(body[line_start:idx]).lower():
                continue
            hdr_end = body.find(b"\r\n\r\n", idx)
            if hdr_end < 0:
                break
            val_start = hdr_end + 4
            val_end = body.find(delim, val_start)
            if val_end < 0:
                val_end = len(body)
            if val_end - val_start > 4096:
                continue
            return bytes(body[val_start:val_end]).decode("utf-8", "replace")
    return None


class BodyError(Exception):
    pass


# --------------------------------------------------------------------------
# HTTP handler
# --------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-upstream/1.0"
    disable_nagle_algorithm = True

    def version_string(self):
        return self.server_version

    # ---- logging -------------------------------------------------------
    def log_request(self, code="-", size="-"):
        code = getattr(code, "value", code)
        log("%s %s %s" % (self.command, self.path, code))

    def log_message(self, fmt, *args):
        log("%s - %s" % (self.address_string(), fmt % args))

    # ---- low-level response helpers -------------------------------------
    def _start(self, status, content_type=None, length=None, chunked=False, extra=None):
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("X-Fake-Hostname", HOSTNAME)
        self.send_header("X-Fake-Model", self._resp_model())
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if chunked:
            if self.request_version == "HTTP/1.0":
                self.close_connection = True
                self.send_header("Connection", "close")
                self._chunked = False
            else:
                self.send_header("Transfer-Encoding", "chunked")
                self._chunked = True
            self.send_header("Cache-Control", "no-cache")
        else:
            self.send_header("Content-Length", str(length or 0))
            if self.close_connection:
                self.send_header("Connection", "close")
        self.end_headers()

    def _send_bytes(self, status, data, content_type, extra=None):
        self._start(status, content_type, length=len(data), extra=extra)
        if data and self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _send_json(self, status, obj, extra=None):
        data = json.dumps(obj).encode("utf-8")
        self._send_bytes(status, data, "application/json; charset=utf-8", extra=extra)

    def _send_empty(self, status):
        self._send_bytes(status, b"", None)

    def _send_error(self, status, message, etype=None):
        if etype is None:
            etype = {400: "invalid_request_error", 404: "not_found_error",
                     405: "invalid_request_error", 503: "unavailable_error",
                     500: "server_error"}.get(status, "error")
        # Shape satisfies both OpenAI clients (error.message/type/code) and
        # Anthropic clients (top-level type "error").
        self._send_json(status, {"type": "error", "error": {
            "code": status, "message": message, "type": etype}})

    def _write_raw(self, data):
        if self._chunked:
            self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            self.wfile.write(data)
        self.wfile.flush()

    def _end_stream(self):
        if self._chunked:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    def _sse(self, obj, event=None):
        payload = obj if isinstance(obj, str) else json.dumps(obj)
        if event:
            data = "event: %s\ndata: %s\n\n" % (event, payload)
        else:
            data = "data: %s\n\n" % payload
        self._write_raw(data.encode("utf-8"))

    def _resp_model(self):
        return self._model or ARGS.model_name

    # ---- disconnect detection -------------------------------------------
    def _client_gone(self, timeout):
        """Wait up to `timeout` seconds; True if the client disconnected meanwhile."""
        deadline = time.monotonic() + max(0.0, timeout)
        sock = self.connection
        while True:
            remaining = deadline - time.monotonic()
            try:
                r, _, _ = select.select([sock], [], [], max(0.0, remaining))
            except (OSError, ValueError):
                return True
            if r:
                try:
                    data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    data = None
                except OSError:
                    return True
                if data == b"":
                    return True
                if data:
                    # pipelined bytes from the client: can't poll further, just wait
                    rest = deadline - time.monotonic()
                    if rest > 0:
                        time.sleep(rest)
                    return False
            if remaining <= 0:
                return False

    def _cancelled(self, what="stream"):
        with STATE.lock:
            STATE.cancelled_streams += 1
        log("%s cancelled by client (%s %s)" % (what, self.command, self.path))
        self.close_connection = True

    # ---- request body ---------------------------------------------------
    def _read_body(self, keep_limit):
        """Read the request body; returns (bytearray-or-None, total_bytes).

        keep_limit: None = keep everything, int = keep at most that many bytes
        (the rest is only counted)."""
        keep = bytearray()
        total = 0

        def take(chunk):
            nonlocal total
            total += len(chunk)
            if keep_limit is None:
                keep.extend(chunk)
            elif len(keep) < keep_limit:
                keep.extend(chunk[:keep_limit - len(keep)])

        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise BodyError("connection closed inside chunked body")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise BodyError("invalid chunk size line %r" % line[:40])
                if size < 0:
                    raise BodyError("negative chunk size")
                if size == 0:
                    while True:  # trailers
                        t = self.rfile.readline(65537)
                        if not t or t in (b"\r\n", b"\n"):
                            break
                    break
                remaining = size
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, READ_PIECE))
                    if not chunk:
                        raise BodyError("connection closed inside chunk")
                    take(chunk)
                    remaining -= len(chunk)
                self.rfile.readline(65537)  # CRLF after chunk data
        else:
            cl = self.headers.get("Content-Length")
            try:
                length = int(cl) if cl else 0
            except ValueError:
                raise BodyError("invalid Content-Length %r" % cl)
            if length < 0:
                raise BodyError("negative Content-Length")
            remaining = length
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, READ_PIECE))
                if not chunk:
                    raise BodyError("connection closed inside body")
                take(chunk)
                remaining -= len(chunk)
        return keep, total

    # ---- dispatch -------------------------------------------------------
    def _reset(self):
        self._model = None
        self._chunked = False
        self._status = None

    def do_GET(self):
        self._reset()
        self._guard(self._handle_get)

    def do_HEAD(self):
        self._reset()
        self._guard(self._handle_get)

    def do_POST(self):
        self._reset()
        self._guard(self._handle_post)

    def _other(self):
        self._reset()
        self._guard(self._handle_other)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other

    def _authorized(self):
        """llama-server's rule: with a key, everything but /health needs it (our test hooks
        under /debug stay open)."""
        path = urlsplit(self.path).path
        if not ARGS.api_key or path in ("/health", "/v1/health") or path.startswith("/debug/"):
            return True
        expected = "Bearer " + ARGS.api_key
        return self.headers.get("Authorization", "") == expected

    def _guard(self, fn):
        try:
            if not self._authorized():
                self._drain()
                self.close_connection = True
                return self._send_error(401, "Invalid API Key", "authentication_error")
            fn()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as e:
            self.close_connection = True
            log("client connection lost (%s %s): %s" % (self.command, self.path, e))
        except BodyError as e:
            self.close_connection = True
            log("bad request body (%s %s): %s" % (self.command, self.path, e))
            try:
                self._send_error(400, "bad request body: %s" % e)
            except OSError:
                pass
        except Exception:
            self.close_connection = True
            log("internal error (%s %s):\n%s" % (self.command, self.path, traceback.format_exc()))
            try:
                self._send_error(500, "internal error in fake upstream")
            except Exception:
                pass

    def _drain(self):
        if self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding"):
            self._read_body(0)

    def _handle_other(self):
        self._drain()
        self._send_error(404, "no route for %s %s" % (self.command, urlsplit(self.path).path))

    # ---- GET ------------------------------------------------------------
    def _handle_get(self):
        self._drain()
        url = urlsplit(self.path)
        path = url.path
        vllm = ARGS.mode == "vllm"
        if path == "/health":
            if not STATE.ready:
                return self._send_error(503, "Loading model", "unavailable_error")
            if vllm:
                return self._send_empty(200)
            return self._send_json(200, {"status": "ok"})
        if path in ("/v1/models", "/models"):
            if not STATE.ready:
                return self._send_error(503, "Loading model", "unavailable_error")
            return self._send_json(200, {"object": "list", "data": [{
                "id": ARGS.model_name, "object": "model",
                "created": int(STATE.started_at), "owned_by": "fake"}]})
        if path == "/debug/stats":
            with STATE.lock:
                stats = {
                    "requests": STATE.requests,
                    "served": STATE.served,
                    "rejected": STATE.rejected,
                    "cancelled_streams": STATE.cancelled_streams,
                    "in_flight": STATE.in_flight,
                    "last_headers": dict(STATE.last_headers),
                    "last_body_bytes": STATE.last_body_bytes,
                    "started_at": STATE.started_at,
                    "ready": STATE.ready,
                    "sleeping": STATE.sleeping,
                    "sleep_level": STATE.sleep_level,
                    "sleep_calls": STATE.sleep_calls,
                    "wake_calls": STATE.wake_calls,
                    "mode": ARGS.mode,
                    "model_name": ARGS.model_name,
                    "pid": os.getpid(),
                    "hostname": HOSTNAME,
                }
            return self._send_json(200, stats)
        if path == "/metrics":
            with STATE.lock:
                running, ptok, gtok = (STATE.in_flight, STATE.prompt_tokens_total,
                                       STATE.generation_tokens_total)
            if vllm:
                lbl = '{model_name="%s"}' % ARGS.model_name
                text = (
                    "# HELP vllm:num_requests_running Number of requests currently running.\n"
                    "# TYPE vllm:num_requests_running gauge\n"
                    "vllm:num_requests_running%s %d\n"
                    "# HELP vllm:num_requests_waiting Number of requests waiting.\n"
                    "# TYPE vllm:num_requests_waiting gauge\n"
                    "vllm:num_requests_waiting%s 0\n"
                    "# TYPE vllm:prompt_tokens_total counter\n"
                    "vllm:prompt_tokens_total%s %d\n"
                    "# TYPE vllm:generation_tokens_total counter\n"
                    "vllm:generation_tokens_total%s %d\n"
                ) % (lbl, running, lbl, lbl, ptok, lbl, gtok)
            else:
                text = (
                    "# TYPE llamacpp:prompt_tokens_total counter\n"
                    "llamacpp:prompt_tokens_total %d\n"
                    "# TYPE llamacpp:tokens_predicted_total counter\n"
                    "llamacpp:tokens_predicted_total %d\n"
                    "# TYPE llamacpp:requests_processing gauge\n"
                    "llamacpp:requests_processing %d\n"
                ) % (ptok, gtok, running)
            return self._send_bytes(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/is_sleeping" and sleep_mode():
            return self._send_json(200, {"is_sleeping": STATE.sleeping})
        if path == "/props" and not vllm:
            return self._send_json(200, {
                "model_path": "/models/%s.gguf" % ARGS.model_name,
                "total_slots": 1,
                "default_generation_settings": {"n_ctx": 4096},
            })
        return self._send_error(404, "no route for GET %s" % path)

    # ---- POST -----------------------------------------------------------
    JSON_ROUTES = {
        "/v1/chat/completions": "chat",
        "/chat/completions": "chat",
        "/v1/completions": "completions",
        "/v1/embeddings": "embeddings",
        "/embeddings": "embeddings",
        "/embedding": "embeddings",
        "/completion": "native",
        "/completions": "native",
        "/v1/messages": "messages",
        "/v1/messages/count_tokens": "count_tokens",
    }
    GENERIC_EXTRA = ("/infill", "/rerank", "/reranking", "/v1/rerank", "/v1/reranking")

    def _handle_post(self):
        url = urlsplit(self.path)
        path = url.path

        if path in ("/sleep", "/wake_up"):
            self._drain()
            if not sleep_mode():
                return self._send_error(404, "no route for POST %s" % path)
            if path == "/sleep":
                q = parse_qs(url.query)
                try:
                    level = int((q.get("level") or ["1"])[0])
                except ValueError:
                    level = 1
                with STATE.lock:
                    STATE.sleeping, STATE.sleep_level = True, level
                    STATE.sleep_calls += 1
                log("sleeping (level %d)" % level)
            else:
                with STATE.lock:
                    STATE.wake_calls += 1
                if ARGS.wake_fails:
                    log("wake up failed (--wake-fails)")
                    return self._send_error(500, "wake up failed", "internal_error")
                time.sleep(ARGS.wake_delay)
                with STATE.lock:
                    STATE.sleeping, STATE.sleep_level = False, 0
                log("woke up")
            return self._send_empty(200)

        kind = self.JSON_ROUTES.get(path)
        if kind is None and (path.startswith("/v1/") or path in self.GENERIC_EXTRA):
            kind = "generic"
        if kind is None:
            self._drain()
            return self._send_error(404, "no route for POST %s" % path)

        ctype = self.headers.get("Content-Type") or ""
        lct = ctype.lower()
        if kind != "generic" or "json" in lct or "multipart/" in lct or "x-www-form-urlencoded" in lct:
            keep_limit = None
        else:
            keep_limit = SNIFF_LIMIT
        raw, nbytes = self._read_body(keep_limit)

        # parse the body
        body = {}
        if kind != "generic":
            if raw and raw.strip():
                try:
                    body = json.loads(raw)
                except ValueError as e:
                    return self._send_error(400, "invalid JSON body: %s" % e)
                if not isinstance(body, dict):
                    return self._send_error(400, "JSON body must be an object")
            model = body.get("model")
        else:
            model = None
            if "json" in lct or (not lct and raw and raw.lstrip()[:1] == b"{"):
                if raw and raw.strip():
                    try:
                        body = json.loads(raw)
                    except ValueError as e:
                        if "json" in lct:
                            return self._send_error(400, "invalid JSON body: %s" % e)
                        body = {}
                if isinstance(body, dict):
                    model = body.get("model")
            elif "multipart/form-data" in lct:
                model = find_multipart_field(raw, ctype, "model")
            elif "x-www-form-urlencoded" in lct and raw:
                q = parse_qs(bytes(raw).decode("utf-8", "replace"))
                model = (q.get("model") or [None])[0]
            if model is None:
                model = (parse_qs(url.query).get("model") or [None])[0]
        raw = None  # drop the raw copy
        if model is not None and not isinstance(model, str):
            model = str(model)
        self._model = model

        # readiness / sleep
        if not STATE.ready or STATE.sleeping:
            with STATE.lock:
                STATE.rejected += 1
            msg = "Loading model" if not STATE.ready else "Model is sleeping"
            return self._send_error(503, msg, "unavailable_error")

        with STATE.lock:
            STATE.requests += 1
            STATE.in_flight += 1
            STATE.last_headers = {k.lower(): v for k, v in self.headers.items()}
            STATE.last_body_bytes = nbytes
        try:
            if ARGS.hang:
                log("hanging on %s %s (--hang)" % (self.command, path))
                while True:
                    if self._client_gone(1.0):
                        self._cancelled("hung request")
                        return
            handler = getattr(self, "_post_" + kind)
            ok = handler(body, path, ctype, nbytes)
        finally:
            with STATE.lock:
                STATE.in_flight -= 1
        if ok is False:
            return
        with STATE.lock:
            STATE.served += 1
            served = STATE.served
        if ARGS.exit_after is not None and served >= ARGS.exit_after:
            log("exit-after reached (%d inference requests served): exiting with code %d"
                % (served, ARGS.exit_code))
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            os._exit(ARGS.exit_code)

    # ---- generation core ------------------------------------------------
    def _generate_stream(self, n, emit):
        """Call emit(i) for each token, pacing by --token-rate.
        Returns False if the client went away (already counted)."""
        rate = ARGS.token_rate
        try:
            for i in range(n):
                if rate > 0:
                    if self._client_gone(1.0 / rate):
                        self._cancelled()
                        return False
                emit(i)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self._cancelled()
            return False
        return True

    def _generate_blocking(self, n):
        """Wait as long as generating n tokens takes. False if the client left."""
        rate = ARGS.token_rate
        if rate > 0 and n > 0:
            if self._client_gone(n / rate):
                self._cancelled("request")
                return False
        return True

    def _count_tokens(self, prompt_n, gen_n):
        with STATE.lock:
            STATE.prompt_tokens_total += prompt_n
            STATE.generation_tokens_total += gen_n

    def _send_result(self, obj):
        try:
            self._send_json(200, obj)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self._cancelled("request")
            return False
        return True

    def _finish_stream(self, tail_events):
        try:
            for ev in tail_events:
                if isinstance(ev, tuple):
                    self._sse(ev[1], event=ev[0])
                else:
                    self._sse(ev)
            self._end_stream()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self._cancelled()
            return False
        return True

    # ---- /v1/chat/completions -------------------------------------------
    def _post_chat(self, body, path, ctype, nbytes):
        limit = as_limit(body.get("max_completion_tokens"))
        if limit is None:
            limit = as_limit(body.get("max_tokens"))
        n, hit = n_tokens(limit)
        finish = "length" if hit else "stop"
        prompt_n = chat_prompt_tokens(body)
        model = self._resp_model()
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        llama = ARGS.mode == "llama"
        usage = {"prompt_tokens": prompt_n, "completion_tokens": n,
                 "total_tokens": prompt_n + n}
        t0 = time.monotonic()
        if not body.get("stream"):
            if not self._generate_blocking(n):
                return False
            self._count_tokens(prompt_n, n)
            resp = {
                "id": cid, "object": "chat.completion", "created": created,
                "model": model, "system_fingerprint": "fake",
                "choices": [{"index": 0, "message": {
                    "role": "assistant",
                    "content": "".join(token_text(i) for i in range(n))},
                    "logprobs": None, "finish_reason": finish}],
                "usage": usage,
            }
            if llama:
                resp["timings"] = llama_timings(prompt_n, n, (time.monotonic() - t0) * 1000)
            return self._send_result(resp)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta, finish_reason=None):
            return {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": model, "system_fingerprint": "fake",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish_reason}]}

        self._start(200, "text/event-stream", chunked=True)
        try:
            self._sse(chunk({"role": "assistant", "content": ""}))
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self._cancelled()
            return False
        if not self._generate_stream(n, lambda i: self._sse(chunk({"content": token_text(i)}))):
            return False
        self._count_tokens(prompt_n, n)
        last = chunk({}, finish)
        if llama:
            last["timings"] = llama_timings(prompt_n, n, (time.monotonic() - t0) * 1000)
        tail = [last]
        if include_usage:
            tail.append({"id": cid, "object": "chat.completion.chunk", "created": created,
                         "model": model, "system_fingerprint": "fake",
                         "choices": [], "usage": usage})
        tail.append("[DONE]")
        return self._finish_stream(tail)

    # ---- /v1/completions ------------------------------------------------
    def _post_completions(self, body, path, ctype, nbytes):
        n, hit = n_tokens(as_limit(body.get("max_tokens")))
        finish = "length" if hit else "stop"
        prompt_n = max(1, count_words(body.get("prompt")))
        model = self._resp_model()
        cid = "cmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        llama = ARGS.mode == "llama"
        usage = {"prompt_tokens": prompt_n, "completion_tokens": n,
                 "total_tokens": prompt_n + n}
        t0 = time.monotonic()
        if not body.get("stream"):
            if not self._generate_blocking(n):
                return False
            self._count_tokens(prompt_n, n)
            resp = {
                "id": cid, "object": "text_completion", "created": created,
                "model": model, "system_fingerprint": "fake",
                "choices": [{"index": 0, "text": "".join(token_text(i) for i in range(n)),
                             "logprobs": None, "finish_reason": finish}],
                "usage": usage,
            }
            if llama:
                resp["timings"] = llama_timings(prompt_n, n, (time.monotonic() - t0) * 1000)
            return self._send_result(resp)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(text, finish_reason=None):
            return {"id": cid, "object": "text_completion", "created": created,
                    "model": model, "system_fingerprint": "fake",
                    "choices": [{"index": 0, "text": text, "logprobs": None,
                                 "finish_reason": finish_reason}]}

        self._start(200, "text/event-stream", chunked=True)
        if not self._generate_stream(n, lambda i: self._sse(chunk(token_text(i)))):
            return False
        self._count_tokens(prompt_n, n)
        last = chunk("", finish)
        if llama:
            last["timings"] = llama_timings(prompt_n, n, (time.monotonic() - t0) * 1000)
        tail = [last]
        if include_usage:
            tail.append({"id": cid, "object": "text_completion", "created": created,
                         "model": model, "system_fingerprint": "fake",
                         "choices": [], "usage": usage})
        tail.append("[DONE]")
        return self._finish_stream(tail)

    # ---- /v1/embeddings -------------------------------------------------
    def _post_embeddings(self, body, path, ctype, nbytes):
        inp = body.get("input", body.get("content", ""))
        if isinstance(inp, str):
            items = [inp]
        elif isinstance(inp, list):
            if inp and all(isinstance(x, int) for x in inp):
                items = [" ".join(str(x) for x in inp)]  # a single token array
            else:
                items = [x if isinstance(x, str) else json.dumps(x) for x in inp]
        else:
            items = [json.dumps(inp)]
        b64 = body.get("encoding_format") == "base64"
        data = []
        prompt_n = 0
        for i, text in enumerate(items):
            vec = embedding_for(text)
            prompt_n += max(1, count_words(text))
            if b64:
                emb = base64.b64encode(struct.pack("<8f", *vec)).decode("ascii")
            else:
                emb = vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        self._count_tokens(prompt_n, 0)
        return self._send_result({
            "object": "list", "data": data, "model": self._resp_model(),
            "usage": {"prompt_tokens": prompt_n, "total_tokens": prompt_n},
        })

    # ---- /completion (llama-server native) --------------------------------
    def _post_native(self, body, path, ctype, nbytes):
        limit = as_limit(body.get("n_predict"))
        if limit is None:
            limit = as_limit(body.get("max_tokens"))
        n, hit = n_tokens(limit)
        prompt_n = max(1, count_words(body.get("prompt")))
        model = self._resp_model()
        t0 = time.monotonic()

        def final(content):
            return {
                "content": content, "id_slot": 0, "stop": True, "model": model,
                "tokens_predicted": n, "tokens_evaluated": prompt_n,
                "stop_type": "limit" if hit else "eos",
                "stopping_word": "", "tokens_cached": 0, "truncated": False,
                "timings": llama_timings(prompt_n, n, (time.monotonic() - t0) * 1000),
            }

        if not body.get("stream"):
            if not self._generate_blocking(n):
                return False
            self._count_tokens(prompt_n, n)
            return self._send_result(final("".join(token_text(i) for i in range(n))))

        self._start(200, "text/event-stream", chunked=True)
        if not self._generate_stream(
                n, lambda i: self._sse({"content": token_text(i), "stop": False,
                                        "id_slot": 0})):
            return False
        self._count_tokens(prompt_n, n)
        return self._finish_stream([final("")])

    # ---- /v1/messages (Anthropic) -----------------------------------------
    def _post_messages(self, body, path, ctype, nbytes):
        n, hit = n_tokens(as_limit(body.get("max_tokens")))
        stop_reason = "max_tokens" if hit else "end_turn"
        prompt_n = anthropic_prompt_tokens(body)
        model = self._resp_model()
        mid = "msg_" + uuid.uuid4().hex[:24]
        if not body.get("stream"):
            if not self._generate_blocking(n):
                return False
            self._count_tokens(prompt_n, n)
            return self._send_result({
                "id": mid, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text",
                             "text": "".join(token_text(i) for i in range(n))}],
                "stop_reason": stop_reason, "stop_sequence": None,
                "usage": {"input_tokens": prompt_n, "output_tokens": n},
            })

        self._start(200, "text/event-stream", chunked=True)
        try:
            self._sse({"type": "message_start", "message": {
                "id": mid, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": prompt_n, "output_tokens": 0}}},
                event="message_start")
            self._sse({"type": "content_block_start", "index": 0,
                       "content_block": {"type": "text", "text": ""}},
                      event="content_block_start")
            self._sse({"type": "ping"}, event="ping")
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self._cancelled()
            return False
        if not self._generate_stream(n, lambda i: self._sse(
                {"type": "content_block_delta", "index": 0,
                 "delta": {"type": "text_delta", "text": token_text(i)}},
                event="content_block_delta")):
            return False
        self._count_tokens(prompt_n, n)
        return self._finish_stream([
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                               "usage": {"output_tokens": n}}),
            ("message_stop", {"type": "message_stop"}),
        ])

    def _post_count_tokens(self, body, path, ctype, nbytes):
        return self._send_result({"input_tokens": anthropic_prompt_tokens(body)})

    # ---- catch-all --------------------------------------------------------
    def _post_generic(self, body, path, ctype, nbytes):
        return self._send_result({
            "path": path, "model": self._model, "content_type": ctype,
            "body_bytes": nbytes, "query": urlsplit(self.path).query,
            # Which JSON fields arrived, so tests can see what the proxy added or stripped.
            "json_keys": sorted(body) if isinstance(body, dict) else [],
        })


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            log("connection error from %s: %r" % (client_address, exc))
            return
        log("unhandled error from %s:\n%s" % (client_address, traceback.format_exc()))


class Server6(Server):
    address_family = socket.AF_INET6


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def _on_signal(signum, frame):
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = str(signum)
    log("received %s, exiting" % name)
    os._exit(0)


def main(argv=None):
    global ARGS
    ARGS = parse_args(argv)

    # PID 1 in a container has no default SIGTERM action: install explicitly.
    if ARGS.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)

    if ARGS.exit_at_start is not None:
        log("fatal: failed to load model (fake) '%s' - exiting with code %d"
            % (ARGS.model_name, ARGS.exit_at_start))
        os._exit(ARGS.exit_at_start)

    STATE.started_at = time.time()
    desc = "mode=%s model=%s" % (ARGS.mode, ARGS.model_name)
    server_cls = Server6 if ":" in ARGS.host else Server

    if ARGS.load_style == "refuse" and ARGS.load_delay > 0:
        log("loading model %s for %.2fs (not listening yet)" % (ARGS.model_name, ARGS.load_delay))
        time.sleep(ARGS.load_delay)
        httpd = server_cls((ARGS.host, ARGS.port), Handler)
        STATE.ready = True
        log("fake-upstream listening on %s:%d %s" % (ARGS.host, ARGS.port, desc))
        log("ready")
    else:
        httpd = server_cls((ARGS.host, ARGS.port), Handler)
        log("fake-upstream listening on %s:%d %s" % (ARGS.host, ARGS.port, desc))
        if ARGS.load_delay > 0:
            log("loading model %s for %.2fs (answering 503)" % (ARGS.model_name, ARGS.load_delay))

            def become_ready():
                STATE.ready = True
                log("ready")

            t = threading.Timer(ARGS.load_delay, become_ready)
            t.daemon = True
            t.start()
        else:
            STATE.ready = True
            log("ready")
    try:
        httpd.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        os._exit(0)


if __name__ == "__main__":
    main()

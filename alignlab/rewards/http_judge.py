"""A judge backend that calls an OpenAI-compatible chat completions server (standard library only).

Works with any server that speaks ``POST {base_url}/chat/completions``: the OpenAI API, vLLM's or
SGLang's OpenAI server, llama.cpp's server, LiteLLM and the like. Use it as the ``backend`` of a
``PairwiseJudge`` or ``PointwiseJudge``.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from alignlab.errors import UserError

# a connection the server closed or reset mid-request, or a reply cut short: asked again, as a
# timeout is (a refused connection is not: nothing listens there)
DROPPED = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, http.client.RemoteDisconnected,
           http.client.IncompleteRead)


def _first_line(text: str, limit: int = 200) -> str:
    """The first non-empty line of ``text``, cut to ``limit`` characters (error messages are one line)."""
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return line if len(line) <= limit else line[:limit] + "..."


def _tries(n: int) -> str:
    return f"{n} {'try' if n == 1 else 'tries'}"


class OpenAIBackend:
    """``complete(prompts)``: one chat completion per prompt, sent as a single user message.

    The request body is ``{"model", "messages": [{"role": "user", "content": prompt}], "temperature",
    "max_tokens"}`` and the answer is ``choices[0].message.content`` (a null content, as some
    servers send when the budget runs out, is read as "" and so counts as an unparsed verdict).
    ``api_key`` falls back to the ``OPENAI_API_KEY`` environment variable and is sent as
    ``Authorization: Bearer <key>``; with neither, no header is sent (local servers need none).

    A request is asked again, up to ``retries`` times, waiting ``backoff * 2**attempt`` seconds
    (or the server's ``Retry-After``, capped at 60 s), when it is answered with HTTP 429 or 5xx,
    when it times out (``timeout`` seconds), when the server drops the connection or cuts its reply
    short, when the body is not a chat completion (not JSON, or
    without ``choices[0].message.content``), and, given ``accept`` (the judges give their verdict
    parser's test), when the answer is not a verdict. After the last try a UserError says in one
    line what it got, e.g. "judge request to URL failed after 4 tries: answered 'I like both',
    which is not a verdict". A refused connection or another HTTP status is a UserError at once.
    Up to ``workers`` requests run at once; the outputs come back in prompt order.
    """

    asks_again = True  # complete() takes ``accept`` and asks again for an answer it refuses (judge.py)

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 120.0,
                 max_tokens: int = 1024, temperature: float = 0.0, retries: int = 3, backoff: float = 1.0,
                 workers: int = 4):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise UserError(f"judge base_url must start with http:// or https://, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise UserError(f"judge model name must be a non-empty string, got {model!r}")
        if not timeout > 0:
            raise UserError(f"judge timeout must be > 0 seconds, got {timeout}")
        if not (isinstance(max_tokens, int) and max_tokens >= 1):
            raise UserError(f"judge max_tokens must be an integer >= 1, got {max_tokens!r}")
        if not temperature >= 0:
            raise UserError(f"judge temperature must be >= 0, got {temperature}")
        if not (isinstance(retries, int) and retries >= 0):
            raise UserError(f"judge retries must be an integer >= 0, got {retries!r}")
        if not backoff >= 0:
            raise UserError(f"judge backoff must be >= 0 seconds, got {backoff}")
        if not (isinstance(workers, int) and workers >= 1):
            raise UserError(f"judge workers must be an integer >= 1, got {workers!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.retries = retries
        self.backoff = backoff
        self.workers = workers

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIBackend({self.url!r}, model={self.model!r})"

    def complete(self, prompts: list[str], accept: Callable[[str], bool] | None = None) -> list[str]:
        prompts = list(prompts)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise UserError(f"judge prompt {i} is a {type(p).__name__}, not a string")
        if self.workers == 1 or len(prompts) <= 1:
            return [self.complete_one(p, accept) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(prompts))) as pool:
            return list(pool.map(self.complete_one, prompts, [accept] * len(prompts)))

    def complete_one(self, prompt: str, accept: Callable[[str], bool] | None = None) -> str:
        """The judge's answer to one prompt, asked again as the class docstring says."""
        body = json.dumps({
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            retry_after = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as e:
                try:
                    detail = _first_line(e.read().decode("utf-8", "replace"))
                except Exception:  # a body that cannot be read leaves only the status to report
                    detail = ""
                problem = f"HTTP {e.code} {e.reason}" + (f": {detail}" if detail else "")
                if not (e.code == 429 or 500 <= e.code < 600):
                    raise UserError(f"judge request to {self.url} failed: {problem}") from None
                retry_after = e.headers.get("Retry-After") if e.headers else None
            except urllib.error.URLError as e:  # urllib wraps what fails while connecting
                if not isinstance(e.reason, (TimeoutError, *DROPPED)):
                    raise UserError(f"judge request to {self.url} failed: cannot connect ({e.reason})") from None
                problem = self._passing(e.reason)
            except (TimeoutError, *DROPPED) as e:
                problem = self._passing(e)
            except (OSError, http.client.HTTPException) as e:
                raise UserError(f"judge request to {self.url} failed: {type(e).__name__}: {e}") from None
            else:
                content, problem = self._content(raw)
                if problem is None and accept is not None and not accept(content):
                    shown = repr(_first_line(content)) if content.strip() else "nothing"
                    problem = f"answered {shown}, which is not a verdict"
                if problem is None:
                    return content
            if attempt == self.retries:
                raise UserError(f"judge request to {self.url} failed after {_tries(attempt + 1)}: {problem}")
            time.sleep(self._wait(attempt, retry_after))
        raise AssertionError("unreachable")

    def _passing(self, exc: BaseException) -> str:
        """What a timeout or a dropped connection (``DROPPED``), both asked again, is called in the message."""
        if isinstance(exc, TimeoutError):
            return f"timed out after {self.timeout} s"
        return f"the connection was dropped ({type(exc).__name__})"

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), 60.0)
            except ValueError:
                pass
        return self.backoff * 2**attempt

    def _content(self, raw: bytes) -> tuple[str, str | None]:
        """(``choices[0].message.content``, None) of a response body, or ("", what is wrong with it)."""
        text = raw.decode("utf-8", "replace")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return "", f"the answer is not JSON: {_first_line(text) or '(empty body)'}"
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return "", f"the answer has no choices[0].message.content: {_first_line(text)}"
        if content is None:
            return "", None
        if not isinstance(content, str):
            return "", f"choices[0].message.content is a {type(content).__name__}, not a string"
        return content, None

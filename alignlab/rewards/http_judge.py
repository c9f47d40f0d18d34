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
from concurrent.futures import ThreadPoolExecutor

from alignlab.errors import UserError


def _first_line(text: str, limit: int = 200) -> str:
    """The first non-empty line of ``text``, cut to ``limit`` characters (error messages are one line)."""
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return line if len(line) <= limit else line[:limit] + "..."


class OpenAIBackend:
    """``complete(prompts)``: one chat completion per prompt, sent as a single user message.

    The request body is ``{"model", "messages": [{"role": "user", "content": prompt}], "temperature",
    "max_tokens"}`` and the answer is ``choices[0].message.content`` (a null content, as some
    servers send when the budget runs out, is read as "" and so counts as an unparsed verdict).
    ``api_key`` falls back to the ``OPENAI_API_KEY`` environment variable and is sent as
    ``Authorization: Bearer <key>``; with neither, no header is sent (local servers need none).

    A request answered with HTTP 429 or 5xx is retried up to ``retries`` times, waiting
    ``backoff * 2**attempt`` seconds (or the server's ``Retry-After``, capped at 60 s). Anything
    else that goes wrong (a refused connection, another HTTP status, a timeout, a body that is not
    JSON or lacks the fields) is a UserError naming the URL and the cause. Up to ``workers``
    requests run at once; the outputs come back in prompt order.
    """

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

    def complete(self, prompts: list[str]) -> list[str]:
        prompts = list(prompts)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise UserError(f"judge prompt {i} is a {type(p).__name__}, not a string")
        if self.workers == 1 or len(prompts) <= 1:
            return [self.complete_one(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(prompts))) as pool:
            return list(pool.map(self.complete_one, prompts))

    def complete_one(self, prompt: str) -> str:
        """The judge's answer to one prompt, retrying 429 and 5xx answers."""
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
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                return self._content(raw)
            except urllib.error.HTTPError as e:
                try:
                    detail = _first_line(e.read().decode("utf-8", "replace"))
                except Exception:  # a body that cannot be read leaves only the status to report
                    detail = ""
                retryable = e.code == 429 or 500 <= e.code < 600
                if not retryable or attempt == self.retries:
                    tried = f" after {attempt + 1} attempts" if retryable and attempt else ""
                    raise UserError(f"judge request to {self.url} failed{tried}: HTTP {e.code} {e.reason}"
                                    + (f": {detail}" if detail else "")) from None
                time.sleep(self._wait(attempt, e.headers.get("Retry-After") if e.headers else None))
            except TimeoutError:
                raise UserError(f"judge request to {self.url} timed out after {self.timeout} s") from None
            except urllib.error.URLError as e:
                reason = e.reason
                if isinstance(reason, TimeoutError):
                    raise UserError(f"judge request to {self.url} timed out after {self.timeout} s") from None
                raise UserError(f"judge request to {self.url} failed: cannot connect ({reason})") from None
            except (OSError, http.client.HTTPException) as e:
                raise UserError(f"judge request to {self.url} failed: {type(e).__name__}: {e}") from None
        raise AssertionError("unreachable")

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), 60.0)
            except ValueError:
                pass
        return self.backoff * 2**attempt

    def _content(self, raw: bytes) -> str:
        """``choices[0].message.content`` of a response body; a UserError when it is not there."""
        text = raw.decode("utf-8", "replace")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise UserError(f"judge response from {self.url} is not JSON: {_first_line(text) or '(empty body)'}") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise UserError(f"judge response from {self.url} has no choices[0].message.content: "
                            f"{_first_line(text)}") from None
        if content is None:
            return ""
        if not isinstance(content, str):
            raise UserError(f"judge response from {self.url}: choices[0].message.content is a "
                            f"{type(content).__name__}, not a string")
        return content

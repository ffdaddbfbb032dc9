"""The judge's HTTP errors in one line, and the preflight request that proves a judge before training.

`preflight(cfg)` is what `JudgeBenchmark.check` calls (`eval.judge.preflight`); `failure_reason` is how a
failed request reads in a judge item's `judge_error`: for an HTTP error, its status and the server's own
reason (the body's `error.message`, `message` or `detail`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sft_sweeps.config import JudgeConfig


def failure_reason(error: Exception) -> str:
    """One line saying why a request failed, with the server's own reason for an HTTP error.

    Example: `HTTP 400 BadRequestError: Server is pinned to model-a` (the body's `error.message`,
    `message` or `detail`, else its text).
    """
    import openai

    if isinstance(error, openai.APIStatusError):
        body = error.body
        reason = None
        if isinstance(body, dict):
            inner = body.get("error", body)
            reason = inner.get("message") if isinstance(inner, dict) else inner
            reason = reason or body.get("message") or body.get("detail")
        if not reason:
            try:
                reason = error.response.text
            except Exception:  # noqa: BLE001 - a streamed or closed body: the exception's text will do
                reason = None
        reason = reason or str(error)
        text = f"HTTP {error.status_code} {type(error).__name__}: {reason}"
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(str(text).split())[:500]


def scrub(text: str, key: str) -> str:
    # An error message may echo request headers; the key must not reach result.json or the logs.
    return text.replace(key, "***") if key else text


class JudgeUnreachable(RuntimeError):
    """The judge refused the preflight request for a permanent reason (HTTP 4xx): the message quotes it."""


def preflight(cfg: JudgeConfig) -> str | None:
    """One real round trip to the judge before any training: URL, model name and key proven.

    `GET /models` where the server has it, then a tiny chat completion. A permanent error (HTTP 4xx other
    than 408/409/429) raises, quoting the server, and naming the models `/models` lists when the configured
    one is not among them; a transient one (connection, timeout, 5xx, a body that is not JSON) is returned as
    a warning line and the run goes on. A model the server answers for without listing it (`transformers
    serve` lists its hub cache, not the model it was started with) is a warning too.

    Raises:
        JudgeUnreachable: one line naming `eval.judge.*` and quoting the server.
    """
    import openai

    key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env is not None else ""
    client = openai.OpenAI(
        base_url=cfg.base_url, api_key=key or "EMPTY", timeout=min(cfg.timeout_s, 30.0), max_retries=0
    )
    where = f"eval.judge.base_url={cfg.base_url} eval.judge.model={cfg.model}"
    served: list[str] | None = None

    def permanent(error: openai.APIStatusError) -> bool:
        return 400 <= error.status_code < 500 and error.status_code not in (404, 408, 409, 429)

    try:
        try:
            served = [m.id for m in client.models.list()]
        except openai.APIStatusError as e:
            if permanent(e):  # a bad key is refused here already
                raise
            # No /models on this server (404) or a transient error: the chat completion decides.
        client.chat.completions.create(
            model=cfg.model,
            messages=[{"role": "user", "content": "Reply with the rating [[1]] and nothing else."}],
            temperature=0,
            max_tokens=8,
        )
    except openai.APIStatusError as e:
        reason = scrub(failure_reason(e), key)
        if permanent(e) or e.status_code == 404:  # a chat endpoint that is not there is no transient error
            listed = f" (GET /models lists {served[:10]})" if served and cfg.model not in served else ""
            raise JudgeUnreachable(f"{where}: the judge refused a test request: {reason}{listed}") from None
        return f"judge preflight: {where}: transient failure, going on: {reason}"
    except (openai.OpenAIError, ValueError) as e:
        return f"judge preflight: {where}: transient failure, going on: {scrub(failure_reason(e), key)}"
    finally:
        client.close()
    if served and cfg.model not in served:
        return f"judge preflight: {where}: answered, though GET /models does not list it ({served[:10]})"
    return None

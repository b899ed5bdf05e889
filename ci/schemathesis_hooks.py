"""schemathesis checks of our own (loaded by ci/schemathesis.sh via SCHEMATHESIS_HOOKS).

DESIGN.md promises that every refusal carries the JSON error body
`{"error": {"code": "...", "message": "..."}}` with a stable `code`; schemathesis's
built-in checks only look at 5xx and at what the schema documents.
"""

import json

import schemathesis


@schemathesis.check
def error_body_with_code(ctx, response, case):
    """Every 4xx answer is `application/json` with `error.code` and `error.message`."""
    if not 400 <= response.status_code < 500:
        return None
    shown = f"{case.method} {case.formatted_path} -> {response.status_code}"
    content_type = response.headers.get("content-type") or response.headers.get("Content-Type")
    if isinstance(content_type, list):
        content_type = content_type[0] if content_type else None
    if not content_type or not content_type.split(";")[0].strip().lower() == "application/json":
        raise AssertionError(f"{shown} has content type {content_type!r}, not application/json")
    try:
        body = json.loads(response.content)
    except ValueError as error:
        raise AssertionError(f"{shown} has a body that is not JSON ({error}): {response.content[:200]!r}")
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        raise AssertionError(f"{shown} has no `error` object: {body!r}"[:400])
    code, message = error.get("code"), error.get("message")
    if not isinstance(code, str) or not code or not code.isascii() or code != code.lower():
        raise AssertionError(f"{shown} has no stable snake_case `error.code`: {body!r}"[:400])
    if not isinstance(message, str) or not message:
        raise AssertionError(f"{shown} has no `error.message`: {body!r}"[:400])
    return None


# DESIGN.md's one designed 5xx: a read at `min_index` this replica has not applied
# within `min_index_wait`, or a write with no leader, is 503 with `Retry-After` and
# one of these codes (the client retries). Every other 5xx is a bug.
RETRYABLE_503 = {"not_caught_up", "no_leader"}


@schemathesis.check
def no_server_error_but_retryable_503(ctx, response, case):
    """No 5xx, except the documented retryable 503 (code and `Retry-After` checked)."""
    if response.status_code < 500:
        return None
    shown = f"{case.method} {case.formatted_path} -> {response.status_code}"
    code = None
    try:
        body = json.loads(response.content)
        code = body["error"]["code"]
    except (ValueError, KeyError, TypeError):
        pass
    retry_after = response.headers.get("retry-after") or response.headers.get("Retry-After")
    if response.status_code == 503 and code in RETRYABLE_503 and retry_after:
        return None
    raise AssertionError(f"{shown} (code {code!r}): {response.content[:300]!r}")

"""Receive Replicate's webhooks (and self-hosted workers', signed the same way): verify the
signature, refuse stale deliveries, then update the job store.

Replicate signs with the Standard Webhooks scheme: headers `webhook-id`, `webhook-timestamp`
and `webhook-signature` (HMAC-SHA256 of "id.timestamp.body" with the account's `whsec_` secret).
The check is the `replicate` package's own (`replicate.webhooks.validate`, constant-time compare);
`signed_headers` signs a self-hosted worker's deliveries for it. No answer ever contains the
secret or an exception's text.

Statuses, chosen for Replicate's retries (it retries anything but 2xx): 200 once the store holds
the news, also for a repeated delivery (so the sender stops) and for news of a prediction whose
create is not recorded yet (kept and applied when it is); 400 for a body that is not a
prediction, 401 for a bad signature or timestamp, 413 for a body over 1 MB, 503 when the store
could not be updated (Replicate tries again later).
"""

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time

from replicate.webhook import WebhookSigningSecret, Webhooks

from .jobs import News, news_of

TOLERANCE_S = 300  # deliveries older (or newer) than 5 minutes are refused
MAX_BODY_BYTES = 1024 * 1024  # a prediction record; outputs are URLs
logger = logging.getLogger("latentsync.client")


def check_secret(secret: str) -> str:
    """`secret` if it is a webhook signing secret (whsec_ and base64); else ValueError (without it)."""
    prefix, _, key = (secret or "").strip().partition("_")
    try:
        valid = prefix == "whsec" and len(base64.b64decode(key, validate=True)) >= 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise ValueError("The webhook secret must look like whsec_ followed by base64 (see `client.webhook_secret()`); check LATENTSYNC_WEBHOOK_SECRET or --secret-file.")
    return secret.strip()


def signed_headers(secret: str, webhook_id: str, body: str, timestamp: int | None = None) -> dict:
    """The Standard Webhooks headers of a delivery of `body` signed with `secret` (whsec_...)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    key = base64.b64decode(check_secret(secret).split("_", 1)[1])
    signature = hmac.new(key, f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp), "webhook-signature": "v1," + base64.b64encode(signature).decode()}


def handle_webhook(headers: dict, body: bytes | str, secret: str, store) -> tuple[int, str]:
    """Framework-agnostic webhook handler: returns (HTTP status, message). See the module doc."""
    headers = {name.lower(): value for name, value in dict(headers).items()}
    refused = _refuse_headers(headers)
    if refused:
        return refused
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
    except UnicodeDecodeError:
        return 400, "rejected: the body is not UTF-8 text"
    try:
        Webhooks.validate(headers=headers, body=text, secret=WebhookSigningSecret(key=secret), tolerance=TOLERANCE_S)
    except (ValueError, TypeError):  # every validation error, and malformed base64 in the signature
        return 401, "rejected: invalid signature"
    news = parse_prediction(text)
    if isinstance(news, tuple):
        return news
    return apply_news(store, news, webhook_id=headers["webhook-id"])


def _refuse_headers(headers: dict) -> tuple[int, str] | None:
    """The answer to a delivery refused on its headers alone, before its body is read."""
    if not all(headers.get(name) for name in ("webhook-id", "webhook-timestamp", "webhook-signature")):
        return 401, "rejected: webhook-id, webhook-timestamp and webhook-signature headers are required"
    try:
        skew = abs(time.time() - int(headers["webhook-timestamp"]))
    except ValueError:
        return 401, "rejected: invalid timestamp"
    if skew > TOLERANCE_S:
        return 401, "rejected: the timestamp is more than 5 minutes away"
    return None


def parse_prediction(text: str) -> News | tuple[int, str]:
    """The news in a webhook body, or (400, why) if it is not a prediction record."""
    try:
        return news_of(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError):
        return 400, "rejected: the body is not a prediction"


def apply_news(store, news: News, webhook_id: str | None = None, attempt: str | None = None) -> tuple[int, str]:
    """Record a webhook's news in the store: (200, outcome), or (503, ...) if the store failed."""
    try:
        outcome = store.receive(news, webhook_id=webhook_id, attempt=attempt)
    except Exception as error:  # SQLite busy, Redis unreachable: the sender retries later
        logger.warning("webhook for prediction %s not recorded: %s", news.prediction_id, type(error).__name__)
        return 503, "the job store is unavailable; retry later"
    return 200, f"{outcome}: prediction {news.prediction_id} {news.status}"


async def read_body(receive, limit: int) -> bytes | None:
    """An ASGI request's body, or None as soon as it grows past `limit` bytes."""
    body, more = bytearray(), True
    while more:
        event = await receive()
        body += event.get("body", b"")
        more = event.get("more_body", False)
        if len(body) > limit:
            return None
    return bytes(body)


def webhook_app(secret: str, store):
    """A small ASGI app answering POSTs with `handle_webhook`; mount it anywhere. The secret is
    checked here, at start-up (ValueError if it is not a whsec_ secret)."""
    secret = check_secret(secret)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        too_large = (413, "rejected: the body is over 1 MB")
        if scope["method"] != "POST":
            status, message = 405, "POST only"
        else:  # headers first: nothing unsigned, stale or oversized is read
            status, message = _refuse_headers(headers) or (too_large if int(headers.get("content-length") or 0) > MAX_BODY_BYTES else (None, None))
            if status is None:
                body = await read_body(receive, MAX_BODY_BYTES)
                status, message = too_large if body is None else handle_webhook(headers, body, secret, store)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
        await send({"type": "http.response.body", "body": message.encode()})

    return app

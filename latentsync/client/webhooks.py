"""Receive Replicate's webhooks: verify the signature, refuse stale and replayed deliveries, then
update the job store.

Replicate signs with the Standard Webhooks scheme: headers `webhook-id`, `webhook-timestamp`
and `webhook-signature` (HMAC-SHA256 of "id.timestamp.body" with the account's `whsec_` secret).
The check is the `replicate` package's own (`replicate.webhooks.validate`, constant-time compare).
"""

import json

from replicate.webhook import WebhookSigningSecret, WebhookValidationError, Webhooks

TOLERANCE_S = 300  # deliveries older (or newer) than 5 minutes are refused


def handle_webhook(headers: dict, body: bytes | str, secret: str, store) -> tuple[int, str]:
    """Framework-agnostic webhook handler: returns (HTTP status, message).

    400 for a malformed request, 401 for a bad signature or timestamp, 409 for a replay; on 200
    the job store holds the prediction's new status and output.
    """
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    try:
        Webhooks.validate(headers=dict(headers), body=text, secret=WebhookSigningSecret(key=secret), tolerance=TOLERANCE_S)
    except WebhookValidationError as error:
        return 401, f"rejected: {error}"
    except (ValueError, TypeError) as error:  # malformed signature or timestamp values
        return 400, f"rejected: {error}"
    webhook_id = {k.lower(): v for k, v in dict(headers).items()}["webhook-id"]
    try:
        prediction = json.loads(text)
        prediction_id, status = prediction["id"], prediction["status"]
    except (ValueError, KeyError, TypeError):
        return 400, "rejected: the body is not a prediction"
    if not store.first_sighting(webhook_id):
        return 409, f"rejected: webhook {webhook_id} was already received"
    job = store.by_prediction(prediction_id)
    if job is None:
        return 200, f"ignored: prediction {prediction_id} is not one of ours"
    output = prediction.get("output")
    store.update(
        job.key,
        status=status,
        output_url=output.get("video") if isinstance(output, dict) else output,
        error=prediction.get("error"),
    )
    return 200, f"updated job {job.key[:12]}: {status}"


def webhook_app(secret: str, store):
    """A small ASGI app answering POSTs with `handle_webhook`; mount it anywhere."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            status, message = 405, "POST only"
        else:
            body, more = b"", True
            while more:
                event = await receive()
                body += event.get("body", b"")
                more = event.get("more_body", False)
            headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
            status, message = handle_webhook(headers, body, secret, store)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
        await send({"type": "http.response.body", "body": message.encode()})

    return app

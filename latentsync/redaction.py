"""Credentials kept out of messages and logs: the downloader's mirror URLs and the client's Redis
URL are shown with their secrets masked."""

import re
from urllib.parse import unquote


def mask_credentials(text: str, secrets=()) -> str:
    """`text` with the credentials of every URL in it masked (the user:password@ part, and each
    query value), and each of `secrets` (3 characters or more) masked wherever it appears."""
    text = re.sub(r"(?<=://)[^/@\s]+@", "***@", text)
    text = re.sub(r"(?<=[?&])([^=&#\s]+)=[^&#\s]+", r"\1=***", text)
    for secret in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        text = text.replace(secret, "***").replace(unquote(secret), "***")
    return text

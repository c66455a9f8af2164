"""Credentials never leave the process in clear: the one helper that masks a stream URL.

``rtsp://user:pass@host/…`` -> ``rtsp://***@host/…``; query values of parameters
that look like secrets (``?token=…``, ``password``, ``key``, ``signature``, …) ->
``***``. Every log line, ``/cameras`` row, alarm record and event that names a
camera's URL goes through :func:`mask_url`; the clear URL lives only in the reader
that opens it (and in the ingress that hands it over).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SECRET_KEYS = re.compile(r"pass|pwd|secret|token|key|auth|sig|credential", re.IGNORECASE)
MASK = "***"


def mask_url(url: str) -> str:
    """``url`` with its user info and secret-looking query values replaced by ``***``."""
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:  # not parseable as a URL: mask anything before an '@' to be safe
        return re.sub(r"^[^/]*//[^@/]*@", lambda m: m.group(0).split("//")[0] + "//" + MASK + "@", text)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(SECRET_KEYS.search(key) for key, _ in pairs):
            query = urlencode([(k, MASK if SECRET_KEYS.search(k) else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return text
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_text(text: str, url: str) -> str:
    """``text`` (an error message that may quote the URL or its password) with the secrets of ``url`` masked."""
    text = str(text).replace(url, mask_url(url))
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    if parts.username and parts.password:  # user info as written, then the password on its own
        text = text.replace(f"{parts.username}:{parts.password}@", MASK + "@")
    if parts.password and len(parts.password) >= 3:  # (a 1-2 character password would mask half the text)
        text = text.replace(parts.password, MASK)
    for key, value in parse_qsl(parts.query):
        if value and SECRET_KEYS.search(key):
            text = text.replace(value, MASK)
    return text

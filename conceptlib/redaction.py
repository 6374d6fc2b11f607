"""Secrets never leave the process: every URL shown, written to a file or stored in an event goes through here.

A registry URL can carry a password in its userinfo (``user:PASSWORD@host``, where the password may
itself hold '@' or '/') or in its query (``?password=...``, as libpq accepts). SQLAlchemy's own rendering
hides only the first kind and splits a password with '@' at the wrong place, so conceptlib does its own.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote

HIDDEN = "***"
SECRET_KEYS = re.compile(r"pass|pwd|secret|token|key|auth|cred", re.IGNORECASE)
"""Query keys whose values are hidden (``password``, ``sslpassword``, ``passfile``, ``api_key``, ...)."""
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>:;,.)\]]")
"""A URL in running text: up to a space or quote, less trailing punctuation."""


def redact_url(url: str) -> str:
    """``url`` with the password of its userinfo and every secret query value replaced by ``***``.

    The userinfo ends at the last '@' before the query, so a password holding '@' is hidden whole;
    a userinfo without ':' is a bare user name and stays. Text without ``://`` is returned as it is.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    body, question, query = rest.partition("?")
    userinfo, at, location = body.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        body = f"{user}:{HIDDEN}@{location}" if colon else body
    if question:
        query = "&".join(
            f"{quote(key, safe='')}={HIDDEN}" if SECRET_KEYS.search(key) else f"{quote(key, safe='')}={quote(value)}"
            for key, value in parse_qsl(query, keep_blank_values=True)
        )
    return f"{scheme}://{body}{question}{query}"


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (a driver's error message may quote the URL it was given)."""
    return _URL.sub(lambda match: redact_url(match[0]), text)

"""Conditional GET for the lists and card fragments a page polls: an ETag of the body, 304 when it is unchanged."""

from __future__ import annotations

import logging

from flask import Response, make_response, request

logger = logging.getLogger(__name__)


def conditional(answer: object) -> Response:
    """`answer` (a view's return value) with a strong ETag of its body, made 304 without a body when the request's
    `If-None-Match` names it. Responses vary with who asks (private fields), hence `Cache-Control: private`."""
    response = make_response(answer)
    if response.status_code != 200:
        return response
    response.add_etag()
    response.headers["Cache-Control"] = "private, no-cache"
    response.make_conditional(request)  # turns `response` itself into a 304 when it matches
    return response

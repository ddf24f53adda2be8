"""The status page: `GET /` from a browser (an `Accept` that names text/html) is one hand-written page with
no third-party assets; it holds no data, so it is served without a token, and its script fetches the
admin routes with the token the user enters (kept in the tab's session storage). Any other client gets
what it got before the page existed: 405, the route taking HEAD only. A content security policy lets the
page run its own script and style (by their hashes) and talk to this daemon alone."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from quart import Blueprint, Response, request
from werkzeug.exceptions import MethodNotAllowed

blueprint = Blueprint("page", __name__)

PAGE = files("daemon.api").joinpath("status.html").read_text()


def _hashes(tag: str) -> str:
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", PAGE, flags=re.DOTALL)
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies
    )


POLICY = (
    f"default-src 'none'; script-src {_hashes('script')}; style-src {_hashes('style')}; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@blueprint.route("/", methods=["GET"])
async def status_page() -> Response:
    if "text/html" not in request.headers.get("Accept", ""):
        raise MethodNotAllowed(valid_methods=["HEAD"])
    headers = {
        "Content-Security-Policy": POLICY,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return Response(PAGE, mimetype="text/html", headers=headers)

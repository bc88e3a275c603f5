"""The control routes of the telemetry server: POST /control/<loop>/{setpoint,mode,commission}.

They change what a PLC is told to do, so they refuse to work at all without a configured
bearer token (the router has checked it by then), and require
``Content-Type: application/json`` so a browser cannot forge them with a simple cross-site
form post.  Values are checked here (a finite number, a non-empty mode); the loop itself
refuses what it cannot take (ValueError -> 422, unknown loop KeyError -> 404).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from typing import Any, Protocol

from agent.telemetry.httpwire import HttpError, Request

log = logging.getLogger(__name__)


class Control(Protocol):
    """What the control routes need; `agent.control.ControlRunner` provides it.

    `set_setpoint`/`set_mode` raise KeyError for an unknown loop and ValueError for a value
    the loop refuses; they may be plain or async functions.
    """

    def set_setpoint(self, loop: str, value: float) -> Any: ...

    def set_mode(self, loop: str, mode: str) -> Any: ...

    def status(self) -> dict[str, Any]: ...


def require_control(control: Control | None) -> Control:
    if control is None:
        raise HttpError(404, "no control loops configured")
    return control


async def control_write(
    control: Control | None, has_token: bool, req: Request, loop: str, what: str
) -> dict[str, Any]:
    """Apply one control write (`what`: setpoint | mode | commission); returns the answer."""
    control = require_control(control)
    if not has_token:
        raise HttpError(
            403,
            "control over HTTP needs a bearer token: set http.bearer_token_env or "
            "http.bearer_token_file",
        )
    ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HttpError(415, "Content-Type must be application/json")
    try:
        data = json.loads(req.body)
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HttpError(400, "body must be a JSON object")
    try:
        if what == "setpoint":
            value = data.get("value")
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise HttpError(422, 'expected {"value": <finite number>}')
            result = control.set_setpoint(loop, float(value))
        elif what == "commission":  # a plant test on the running service
            start = getattr(control, "start_commission", None)
            if start is None:
                raise HttpError(501, "this control runner cannot commission")
            result = start(loop, data)
        else:
            mode = data.get("mode")
            if not isinstance(mode, str) or not mode:
                raise HttpError(422, 'expected {"mode": "<mode>"}')
            result = control.set_mode(loop, mode)
        if inspect.isawaitable(result):
            await result
    except KeyError:
        raise HttpError(404, f"no control loop named {loop!r}") from None
    except ValueError as exc:
        raise HttpError(422, str(exc)) from None
    log.info("control %s of loop %s set over HTTP: %s", what, loop, data)
    status = control.status()
    return {"ok": True, "loop": loop, "status": status.get(loop, status)}

"""TOTP (RFC 6238) with pyotp, recovery codes, and the enrolment QR code (segno, inline SVG).

Parameters are the ones every authenticator app supports: SHA-1, 6 digits, 30-second steps
(RFC 6238 §4, §5.2). A code from the previous or the next step is accepted for clock drift
(§5.2 "at most one time step"), and each step is accepted once (the caller records it).
"""

from __future__ import annotations

import hmac
import io
import re
import secrets
import time

import pyotp
import segno

STEP = 30
DIGITS = 6
DRIFT_STEPS = 1
RECOVERY_CODES = 10
_CODE = re.compile(r"^\d{6}$")
_RECOVERY = re.compile(r"^[0-9a-f]{10}$")


def new_secret() -> str:
    """160 random bits, base32 (RFC 4226 §4 recommends a 160-bit shared secret)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, username: str, issuer_name: str) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP).provisioning_uri(name=username, issuer_name=issuer_name)


def qr_svg(uri: str) -> str:
    """`uri` as an inline SVG QR code that scales to the size the page's CSS gives it.

    One user unit per module with a viewBox (segno's `omitsize`): a fixed width and height
    without one made the browser show only the top-left corner of a code squeezed into the
    stylesheet's box. Black on white drawn in the SVG itself, with the quiet zone of 4 modules
    (ISO/IEC 18004 §9.1); crisp edges, since the CSS box is not a whole number of pixels per
    module. Presentation attributes only, no inline style (the pages' CSP has no
    'unsafe-inline').
    """
    buffer = io.BytesIO()
    segno.make(uri, error="m").save(
        buffer, kind="svg", xmldecl=False, svgns=True, nl=False, border=4, dark="#000", light="#fff", omitsize=True, svgclass="qr"
    )
    # segno has no option for it: the attribute goes at the end of the <svg> start tag.
    return buffer.getvalue().decode().replace(">", ' shape-rendering="crispEdges">', 1)


def normalize(value: str) -> str:
    """What the user typed, without spaces or dashes, lower case."""
    return re.sub(r"[\s-]", "", value or "").lower()[:64]


def looks_like_totp(value: str) -> bool:
    return bool(_CODE.match(value))


def matching_step(secret: str, code: str, at: float | None = None) -> int | None:
    """The time step whose code this is (now, one before or one after), or None."""
    if not looks_like_totp(code):
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP)
    current = totp.timecode(int(at if at is not None else time.time()))
    for step in (current, current - DRIFT_STEPS, current + DRIFT_STEPS):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def new_recovery_codes() -> list[str]:
    """Ten codes of 40 random bits each, shown as `xxxxx-xxxxx`."""
    codes = [secrets.token_hex(5) for _ in range(RECOVERY_CODES)]
    return [f"{c[:5]}-{c[5:]}" for c in codes]


def looks_like_recovery_code(value: str) -> bool:
    return bool(_RECOVERY.match(value))


def recovery_hash_input(user_id: str, normalized_code: str) -> str:
    # Bound to the user: a code's HMAC is useless for anyone else's account.
    return f"recovery\x00{user_id}\x00{normalized_code}"

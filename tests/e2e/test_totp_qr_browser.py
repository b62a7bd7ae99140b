"""The TOTP enrolment QR code, as a camera sees it.

Real processes: `ostiary serve` on 127.0.0.1 with OSTIARY_ADMIN_MFA=required and a throwaway
database, an admin created with the real CLI; headless Chromium (Playwright) signs in and lands on
the enrolment page, as every production admin does on their first sign-in. The QR code on the
screen is photographed at a desktop width and at a 390 px phone width and decoded with zxing-cpp:
it must read as exactly the otpauth:// URI of the key the page shows for manual entry (Key URI
Format; RFC 6238 parameters), dark on light, with its quiet zone of 4 modules (ISO/IEC 18004
§9.1), fitting the phone's screen.

The screenshots (the QR element and the whole page) are kept in test-artifacts/screenshots/
(gitignored) for a reviewer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pyotp
import pytest
import zxingcpp
from PIL import Image
from playwright.sync_api import Browser, expect, sync_playwright

from tests.e2e.servers import ostiary_cli, ostiary_env, ostiary_server
from tests.support import CHROMIUM_ARGS, PASSWORD, ROOT, chromium_or_skip, empty_database, free_port

pytestmark = pytest.mark.slow

SHOTS = ROOT / "test-artifacts" / "screenshots"
ADMIN = "root"
QUIET_ZONE = 4  # modules, ISO/IEC 18004 §9.1
LIGHT = 200  # grey level (0-255) a quiet-zone pixel must reach

# (name, Playwright context options): a desktop monitor, and a 390 px phone at 3 device pixels per
# CSS pixel (iPhone 12 to 15).
SCREENS = [
    pytest.param("desktop", {"viewport": {"width": 1280, "height": 800}}, id="desktop 1280 px"),
    pytest.param(
        "phone",
        {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 3, "is_mobile": True, "has_touch": True},
        id="phone 390 px",
    ),
]


@dataclass
class Stack:
    issuer: str


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Asked for before the stack, so a missing browser skips before any server starts.
    path = chromium_or_skip()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def stack(browser, tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("totp-qr")
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    with empty_database(tmp, "ostiary_e2e") as database_url:
        env = ostiary_env(issuer, database_url, admin_mfa="required")
        with ostiary_server(env, port, tmp / "ostiary.log"):
            ostiary_cli(env, "users", "create", ADMIN, "--admin", "--password-stdin", stdin=PASSWORD + "\n")
            yield Stack(issuer)


def expected_uri(issuer: str, secret: str) -> str:
    """The Key URI an authenticator app must read: the admin's name, "Ostiary <host>" as the
    issuer, the secret the page shows (SHA-1, 6 digits, 30 s: pyotp's defaults, RFC 6238)."""
    return pyotp.TOTP(secret).provisioning_uri(name=ADMIN, issuer_name=f"Ostiary {urlsplit(issuer).netloc}")


def decode(path) -> zxingcpp.Barcode:
    """The one QR code in the image, read dark on light only (no inverted retry)."""
    found = zxingcpp.read_barcodes(Image.open(path), formats=zxingcpp.BarcodeFormat.QRCode, try_invert=False)
    assert len(found) == 1, f"{path.name}: {len(found)} QR codes decoded (a scanner would read none)"
    return found[0]


def assert_quiet_zone(path, code: zxingcpp.Barcode) -> None:
    """At least 4 light modules around the symbol, inside the element the page shows."""
    image = Image.open(path).convert("L")
    width, height = image.size
    corners = code.position
    left, top = corners.top_left.x, corners.top_left.y
    right, bottom = corners.bottom_right.x, corners.bottom_right.y
    modules = 17 + 4 * int(code.extra["Version"])  # ISO/IEC 18004 §5.3.1
    module = (right - left) / modules
    margins = {"left": left, "top": top, "right": width - right, "bottom": height - bottom}
    assert min(margins.values()) >= (QUIET_ZONE - 0.5) * module, f"{path.name}: {margins} px, modules of {module:.1f} px"
    # Every pixel of the quiet zone is light (a pixel's width off the symbol, for antialiasing).
    edge = max(1, round(module / 4))
    bands = [
        (0, 0, width, top - edge),
        (0, bottom + edge, width, height),
        (0, 0, left - edge, height),
        (right + edge, 0, width, height),
    ]
    darkest = min(image.crop(band).getextrema()[0] for band in bands)
    assert darkest >= LIGHT, f"{path.name}: a quiet-zone pixel is {darkest}/255"


@pytest.mark.parametrize(("screen", "options"), SCREENS)
def test_the_enrolment_qr_code_on_screen_decodes_to_the_key_uri_of_the_key_shown(browser, stack, screen, options):
    context = browser.new_context(base_url=stack.issuer, **options)
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        page.goto("/admin")
        page.get_by_label("Username").fill(ADMIN)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(f"{stack.issuer}/account/mfa?next=%2Fadmin")

        # The key is also there to type in: the same secret, in groups of four.
        key = page.locator("#totp-secret")
        secret = key.get_attribute("data-secret")
        assert secret and key.inner_text().replace(" ", "") == secret

        qr = page.get_by_role("img", name="QR code for your authenticator app").locator("svg")
        expect(qr).to_be_visible()
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"totp-enrolment-{screen}.png"), full_page=True)
        shot = SHOTS / f"totp-qr-{screen}.png"
        qr.screenshot(path=str(shot))

        # Square, not cut by the screen's edge, and big enough for a camera at arm's length.
        box = qr.bounding_box()
        viewport = options["viewport"]["width"]
        assert box is not None and abs(box["width"] - box["height"]) < 1, box
        assert box["x"] >= 0 and box["x"] + box["width"] <= viewport, (box, viewport)
        assert box["width"] >= 160, box

        code = decode(shot)
        assert code.text == expected_uri(stack.issuer, secret)
        assert_quiet_zone(shot, code)
    finally:
        context.close()

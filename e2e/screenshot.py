"""Take the README's screenshot: the demo shop's home at 1280x800 with the consent banner open
on a first visit, saved as ``e2e/banner.png``.

Run: ``python3 e2e/screenshot.py [OUT.png]`` (starts its own ``tagwerk serve`` in a temporary
directory; needs Chromium as the browser tests do).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from e2e.conftest import launch  # noqa: E402
from e2e.shop import DESKTOP  # noqa: E402
from tests.servers import Server  # noqa: E402


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "e2e" / "banner.png"
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "var").start()
        try:
            with sync_playwright() as playwright:
                browser = launch(playwright)
                context = browser.new_context(base_url=server.url, locale="en-US", **DESKTOP)
                page = context.new_page()
                page.goto("/demo/")
                dialog = page.get_by_role("dialog")
                expect(dialog).to_be_visible()
                page.mouse.move(0, 0)  # no hover effects
                page.wait_for_timeout(300)  # the banner's fade-in, if any
                page.screenshot(path=str(out))
                browser.close()
        finally:
            server.stop()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Screenshots of every dashboard page into docs/ui/, from the same headless Chromium the
tests drive, against a real platform with some traffic on it.

    .venv/bin/python -m tests.ui.screenshots [OUT_DIR]
"""

from __future__ import annotations

import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.conftest import RunningPlatform, start_platform
from tests.ui.browser import ARGS, CHROMIUM, GREETER, deploy_two_versions, unavailable

OUT = Path(__file__).parents[2] / "docs" / "ui"
TRAFFIC_S = 25.0


def traffic(platform: RunningPlatform, stop: threading.Event) -> None:
    """A few invocations a second, some slow, a few failing: something for the charts."""
    client = platform.client()
    rng = random.Random(7)
    while not stop.is_set():
        event = {"name": rng.choice(["ada", "grace", "linus"]), "sleep_ms": rng.expovariate(1 / 8)}
        if rng.random() < 0.06:
            event["fail"] = True
        for name in ("greeter", "resize-image"):
            try:
                client.invoke_raw(name, event)
            except Exception:  # noqa: S112 - failures are part of the picture
                continue
        stop.wait(rng.uniform(0.05, 0.25))


def main(out: Path) -> None:
    reason = unavailable()
    if reason:
        sys.exit(f"cannot take screenshots: {reason}")
    from playwright.sync_api import expect, sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        platform = start_platform(Path(tmp))
        try:
            deploy_two_versions(platform)
            client = platform.client()
            client.set_traffic("greeter", {1: 80, 2: 20})
            client.deploy(GREETER, name="resize-image")
            client.set_secret("STRIPE_KEY", "sk_test_not_a_real_one")
            stop = threading.Event()
            worker = threading.Thread(target=traffic, args=(platform, stop), daemon=True)
            worker.start()
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(f"{platform.url}/ui/")
                expect(page.get_by_test_id("api-key")).to_be_visible()
                page.screenshot(path=out / "login.png")
                page.get_by_test_id("api-key").fill(platform.api_key)
                page.get_by_test_id("login").click()
                expect(page.get_by_test_id("function-greeter")).to_be_visible()
                time.sleep(TRAFFIC_S)  # let the charts fill: this is a picture, not a test
                page.goto(f"{platform.url}/ui/#/")
                expect(page.get_by_test_id("function-resize-image")).to_be_visible()
                page.screenshot(path=out / "functions.png")
                page.goto(f"{platform.url}/ui/#/fn/greeter")
                page.get_by_test_id("invoke").click()
                expect(page.get_by_test_id("invoke-response")).to_be_visible()
                expect(page.get_by_test_id("log-line").first).to_be_visible()
                page.wait_for_timeout(1500)
                page.screenshot(path=out / "function.png", full_page=True)
                page.goto(f"{platform.url}/ui/#/usage")
                page.wait_for_timeout(1500)
                page.screenshot(path=out / "usage.png")
                page.goto(f"{platform.url}/ui/#/audit")
                expect(page.get_by_test_id("audit-event").first).to_be_visible()
                page.screenshot(path=out / "audit.png")
                browser.close()
            stop.set()
            worker.join()
        finally:
            platform.stop()
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)

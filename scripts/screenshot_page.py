"""Start `unclip serve` on the shipped model, generate a grid from the web page in headless Debian
chromium, and save the screenshot (docs/page.png): the page as a user sees it.

    .venv/bin/python scripts/screenshot_page.py [--out docs/page.png] [--prompt TEXT]
"""

import argparse
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from unclip.models import default_model_dir
from unclip.serve.fuzz import start_server

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("docs/page.png"))
    p.add_argument("--prompt", default="a grinning cat, 3D style")
    p.add_argument("--model", type=Path, default=default_model_dir())
    a = p.parse_args()
    proc, url = start_server(a.model)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.goto(url + "/")
            page.fill("#prompt", a.prompt)
            page.fill("#num", "4")
            page.fill("#seed", "0")
            page.click("#go")
            page.wait_for_function("document.querySelectorAll('#gallery figure img').length === 4 && "
                                   "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)",
                                   timeout=300_000)
            a.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(a.out))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Drives a cdpgate session with Python Playwright (connect_over_cdp, no browser of its
own), as drive.mjs does with Node's clients, and prints what it saw as JSON.
usage: python playwright_drive.py <cdp_url> <site_url>"""

import json
import struct
import sys

from playwright.sync_api import sync_playwright

endpoint, site = sys.argv[1:3]
with sync_playwright() as p:
    browser = p.chromium.connect_over_cdp(endpoint, timeout=15000)
    page = browser.contexts[0].new_page()
    page.goto(site)
    seen = page.evaluate("""() => ({
        title: document.title,
        text: document.querySelector('h1')?.textContent,
        sum: 20 + 22,
        innerWidth, innerHeight,
    })""")
    shot = page.screenshot(type="png")
    width, height = struct.unpack(">II", shot[16:24])
    seen["screenshot"] = {"width": width, "height": height}
    seen["version"] = browser.version
    page.close()
    browser.close()  # for connect_over_cdp this only disconnects
print(json.dumps(seen))

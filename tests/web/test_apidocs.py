"""/docs and /redoc work with no network: their JavaScript and CSS come from the service itself (issue 19)."""

from __future__ import annotations

import re

from harvester_edge.central import apidocs

from .conftest import get, start, wait_for

EXTERNAL = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", re.I)


def test_docs_pages_reference_only_local_assets(tmp_path):
    central = start(tmp_path)
    try:
        for page in ("/docs", "/redoc"):
            html = get(central.url + page).text
            assert not EXTERNAL.search(html), f"{page} loads something from another host:\n{html}"
            assets = re.findall(r'(?:src|href)="(/docs-assets/[^"]+)"', html)
            assert assets, html
            for asset in assets:
                answer = get(central.url + asset)
                assert answer.status_code == 200 and len(answer.content) > 100, asset
        assert (
            get(central.url + "/docs-assets/swagger-ui-bundle.js").content
            == (apidocs.assets_dir() / "swagger-ui-bundle.js").read_bytes()
        )
        assert 'href="/docs"' in get(central.url + "/monitor/").text  # the monitor links the docs
    finally:
        central.stop()


def test_swagger_ui_lists_the_operations_in_chromium_offline(tmp_path, browser):
    from selenium.webdriver.common.by import By

    central = start(tmp_path)
    try:
        browser.get(central.url + "/docs")
        ops = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".opblock"), 30, "Swagger UI's operations")
        paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert len(ops) > 10 and any(p.startswith("/api/v1/") for p in paths), paths
        assert not browser.find_elements(By.CSS_SELECTOR, ".errors-wrapper"), "Swagger UI reports spec errors"
        browser.save_screenshot(str(tmp_path / "docs.png"))

        browser.get(central.url + "/redoc")
        menu = wait_for(
            lambda: browser.find_elements(By.CSS_SELECTOR, "[role=menuitem], li[data-item-id]"),
            30,
            "ReDoc's menu of operations",
        )
        assert len(menu) > 5
        browser.save_screenshot(str(tmp_path / "redoc.png"))
    finally:
        central.stop()

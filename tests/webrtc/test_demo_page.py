"""The demo page's looks in headless Chromium: layout, placeholders, labels, a clean console."""

from __future__ import annotations

from typing import Any

import pytest

from ..conftest import wait_for
from .peers import WAIT, WAIT_MS, DemoPage
from .test_browser_mesh import ARTIFACTS, demo_url, open_meshed_pair

pytestmark = pytest.mark.webrtc

LAPTOP = {"width": 1280, "height": 800}

# Runs in the page: the boxes that must not overlap, and the viewport.
_LAYOUT = """() => {
    const box = (el) => el.getBoundingClientRect().toJSON();
    return {
        header: box(document.querySelector("header")),
        footer: box(document.querySelector("footer")),
        tiles: [...document.querySelectorAll(".tile")].map((tile) => ({
            tile: box(tile),
            caption: box(tile.querySelector("figcaption")),
        })),
        viewport: {width: innerWidth, height: innerHeight},
    };
}"""


def assert_clean(*pages: DemoPage) -> None:
    """No errors in any console and no failed or 4xx/5xx request (a favicon, say)."""
    for page in pages:
        assert page.console_errors == [], page.console_errors
        assert page.failed_requests == [], page.failed_requests


def shows_camera(page: DemoPage) -> None:
    page.page.wait_for_function(
        "() => document.querySelector('#local-video').videoWidth > 0", timeout=WAIT_MS
    )


def remote_tile(page: DemoPage, peer_id: str) -> Any:
    return page.page.locator(f'.tile.remote[data-peer-id="{peer_id}"]')


def test_alone_in_a_room_the_tile_and_its_caption_fit_above_the_controls(server, open_page) -> None:
    page = open_page(demo_url(server, "alone"))
    page.page.set_viewport_size(LAPTOP)
    page.client_id()
    shows_camera(page)
    layout = page.page.evaluate(_LAYOUT)
    ((local,),) = [layout["tiles"]]
    tile, caption = local["tile"], local["caption"]
    footer_top = layout["footer"]["top"]
    assert layout["footer"]["bottom"] <= LAPTOP["height"]
    assert tile["top"] >= layout["header"]["bottom"]
    assert tile["left"] >= 0 and tile["right"] <= LAPTOP["width"]
    assert tile["bottom"] <= footer_top, layout
    assert caption["top"] >= tile["top"] and caption["bottom"] <= footer_top, layout
    # Still the big picture it should be, not shrunk to a thumbnail.
    assert tile["height"] >= 0.6 * (footer_top - layout["header"]["bottom"]), layout
    assert page.page.locator("#local-tile figcaption").is_visible()
    assert page.page.locator("#local-tile .placeholder").is_hidden()
    ARTIFACTS.mkdir(exist_ok=True)
    page.page.screenshot(path=str(ARTIFACTS / "demo-alone.png"))
    assert_clean(page)


def test_a_peer_with_the_camera_off_shows_a_placeholder(server, open_page) -> None:
    first, first_id, second, second_id = open_meshed_pair(server, open_page, "camera-off")
    for page in (first, second):
        page.page.set_viewport_size(LAPTOP)
    assert remote_tile(first, second_id).locator(".placeholder").is_hidden()

    second.page.get_by_role("button", name="Camera off").click()
    placeholder = remote_tile(first, second_id).locator(".placeholder")
    placeholder.wait_for(state="visible", timeout=WAIT_MS)
    initial = next(c for c in second_id if c.isalnum()).upper()
    assert placeholder.locator(".avatar").inner_text() == initial
    assert remote_tile(first, second_id).locator("video").is_hidden()
    assert remote_tile(first, second_id).locator("figcaption").is_visible()
    second.page.locator("#local-tile .placeholder").wait_for(state="visible", timeout=WAIT_MS)
    # The camera is still open, only not sent.
    assert second.page.evaluate("() => window.demo.stream.getVideoTracks()[0].readyState") == "live"

    # Someone joining now sees the placeholder too, and the others' video.
    third = open_page(demo_url(server, "camera-off"))
    third.page.set_viewport_size(LAPTOP)
    third_id = third.client_id()
    assert wait_for(lambda: server.rooms() == {"camera-off": {first_id, second_id, third_id}}, WAIT)
    remote_tile(third, first_id).locator("video").wait_for(state="visible", timeout=WAIT_MS)
    remote_tile(third, second_id).locator(".placeholder").wait_for(state="visible", timeout=WAIT_MS)
    third.page.wait_for_function(
        "id => document.querySelector(`.tile.remote[data-peer-id='${id}'] video`).videoWidth > 0",
        arg=first_id,
        timeout=WAIT_MS,
    )
    ARTIFACTS.mkdir(exist_ok=True)
    third.page.screenshot(path=str(ARTIFACTS / "demo-camera-off.png"))

    second.page.get_by_role("button", name="Camera on").click()
    for page in (first, third):
        remote_tile(page, second_id).locator(".placeholder").wait_for(
            state="hidden", timeout=WAIT_MS
        )
        remote_tile(page, second_id).locator("video").wait_for(state="visible", timeout=WAIT_MS)
    second.page.locator("#local-tile .placeholder").wait_for(state="hidden", timeout=WAIT_MS)
    assert_clean(first, second, third)


def test_copied_label_reverts_to_copy_link(server, open_page) -> None:
    url = demo_url(server, "share")
    page = open_page(url)
    page.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.client_id()
    button = page.page.locator("#copy-link")
    button.click()
    page.page.wait_for_function(
        "() => document.querySelector('#copy-link').textContent === 'Copied'", timeout=WAIT_MS
    )
    assert page.page.evaluate("() => navigator.clipboard.readText()") == url
    page.page.wait_for_function(
        "() => document.querySelector('#copy-link').textContent === 'Copy link'", timeout=WAIT_MS
    )
    # A second copy says so again (and reverts again).
    button.click()
    page.page.wait_for_function(
        "() => document.querySelector('#copy-link').textContent === 'Copied'", timeout=WAIT_MS
    )
    page.page.wait_for_function(
        "() => document.querySelector('#copy-link').textContent === 'Copy link'", timeout=WAIT_MS
    )
    assert_clean(page)

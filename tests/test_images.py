"""Images for the local backend (``_local/_images.py``), each rule with its exact message: the
sources (data:, file:, http(s) with redirects), the address checks, the limits and decoding.
Expected values are hand-written; no network (a recording transport and a fake resolver)."""

from __future__ import annotations

import base64
import io
from urllib.parse import quote, quote_from_bytes

import httpx
import pytest
from conftest import png_data_uri

from azion_ai import ImageError
from azion_ai._local._images import (
    ImageLoader,
    ImagePolicy,
    _address_refused,
    _system_resolver,
    file_url,
)

PNG = base64.b64decode(png_data_uri(size=(40, 30)).split(",", 1)[1])
PUBLIC = "93.184.216.34"


class Recorder(httpx.BaseTransport):
    def __init__(self, answer):
        self.requests: list[httpx.Request] = []
        self.answer = answer

    def handle_request(self, request):
        self.requests.append(request)
        return self.answer(request)


def fetching(answer, resolve=None, **policy):
    seen: list[tuple[str, int]] = []

    def resolver(host, port):
        seen.append((host, port))
        return resolve(host) if resolve else [PUBLIC]

    transport = Recorder(answer)
    return ImageLoader(ImagePolicy(**policy), resolver=resolver, http_transport=transport), transport, seen


def png_response(request=None, **headers):
    return httpx.Response(200, content=PNG, headers={"content-type": "image/png", **headers})


def message(loader, url, where="messages[0].content[1].image_url.url"):
    """The error's own text: the exception reads "<path>: <text>", the path the payload's."""
    with pytest.raises(ImageError) as caught:
        loader.load(url, where)
    assert caught.value.path == where
    assert str(caught.value).startswith(f"{where}: ")
    return str(caught.value)[len(where) + 2 :]


# -- schemes and data: URIs ------------------------------------------------------------------------


def test_schemes():
    images = ImageLoader()
    assert message(images, "ftp://host/a.png") == "unsupported image URL scheme 'ftp'"
    assert message(images, "javascript:alert(1)") == "unsupported image URL scheme 'javascript'"
    upper = "DATA:image/png;base64," + base64.b64encode(PNG).decode()
    assert images.load(upper, "p").size == (40, 30)


def test_data_uris():
    images = ImageLoader(ImagePolicy(max_bytes=len(PNG)))
    b64 = base64.b64encode(PNG).decode()
    assert message(images, "data:image/png;base64") == "malformed data: URI (no comma)"
    assert message(images, "data:text/plain;base64," + b64) == "data: URI media type 'text/plain' is not an image"
    assert images.load("data:IMAGE/PNG;base64," + b64, "p").size == (40, 30)  # media types are case-blind
    assert images.load("data:;base64," + b64, "p").size == (40, 30)  # no media type: decoded and judged by its bytes
    assert message(images, "data:image/png;base64," + b64[:-2] + "@@") == "data: URI has invalid base64"
    limit = len(PNG) * 4 // 3 + 4
    assert "data: URI is larger than" in message(images, "data:image/png;base64," + "A" * (limit + 1))
    exact = ImageLoader(ImagePolicy(max_bytes=300))
    assert message(exact, "data:image/png;base64," + "A" * 405) == "data: URI is larger than 300 bytes (ImagePolicy.max_bytes)"
    assert message(exact, "data:image/png;base64," + "A" * 404) == "not a decodable image (UnidentifiedImageError)"  # at the limit: read
    svg_like = "data:image/png," + quote(b"GIF89a-not-really".decode())
    assert "not a decodable image" in message(images, svg_like)  # percent-encoded payloads are read too
    # percent-encoded bytes are octets (RFC 2397): a PNG sent that way is the same image
    assert images.load("data:image/png," + quote_from_bytes(PNG), "p").size == (40, 30)
    assert message(ImageLoader(ImagePolicy(max_bytes=len(PNG) - 1)), "data:image/png," + quote_from_bytes(PNG)).startswith("data: URI is larger than")


# -- local files -------------------------------------------------------------------------------------


def test_files(tmp_path):
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "big.png").write_bytes(PNG + b"\0" * 200)
    images = ImageLoader(ImagePolicy(allowed_local_dir=str(tmp_path), max_bytes=len(PNG) + 10))
    assert images.load((tmp_path / "a.png").as_uri(), "p").size == (40, 30)
    assert images.load(f"file://localhost{tmp_path}/a.png", "p").size == (40, 30)
    assert images.load(file_url(tmp_path / "a.png"), "p").size == (40, 30)
    assert file_url(tmp_path / "x" / ".." / "a.png") == (tmp_path / "a.png").resolve().as_uri()
    assert message(images, f"file://otherhost{tmp_path}/a.png") == "file: URLs must name a local path"
    assert f"file is larger than {len(PNG) + 10} bytes" == message(images, (tmp_path / "big.png").as_uri())
    (tmp_path / "exact.png").write_bytes(PNG + b"\0" * 10)
    assert images.load((tmp_path / "exact.png").as_uri(), "p").size == (40, 30)  # exactly the limit
    (tmp_path / "outside.png").write_bytes(PNG)
    inner = tmp_path / "inner"
    inner.mkdir()
    only_inner = ImageLoader(ImagePolicy(allowed_local_dir=str(inner)))
    assert f"file is outside the allowed directory {str(inner.resolve())!r}" == message(only_inner, (tmp_path / "outside.png").as_uri())
    assert message(images, (tmp_path / "none.png").as_uri()) == "cannot read file: No such file or directory"
    assert message(ImageLoader(), (tmp_path / "a.png").as_uri()) == "local files are off; set ImagePolicy.allowed_local_dir to allow a directory"


# -- addresses -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("169.254.169.254", "a link-local address (cloud metadata lives here)"),
        ("fe80::1%eth0", "a link-local address (cloud metadata lives here)"),
        ("10.0.0.5", "a private address"),
        ("192.168.1.1", "a private address"),
        ("fd00::1", "a private address"),
        ("224.0.0.1", "a non-public address"),
        ("100.64.0.1", "a non-public address"),
        (PUBLIC, None),
        ("2606:4700::1111", None),
    ],
)
def test_each_kind_of_address(address, why):
    assert _address_refused(address) == why


def test_the_system_resolver_answers_for_localhost():
    assert set(_system_resolver("localhost", 80)) & {"127.0.0.1", "::1"}
    assert _system_resolver("127.0.0.2", 80) == ["127.0.0.2"]  # one stream socket's answer, for that host


def test_host_checks_with_their_messages():
    images, transport, seen = fetching(png_response, resolve=lambda host: {"inside.example.com": ["10.0.0.5"], "none.example.com": []}.get(host, [PUBLIC]))
    assert (message(images, "http://inside.example.com/a.png")
            == "refused: 'inside.example.com' resolves to a private address (10.0.0.5); set ImagePolicy.allow_private_addresses=True to allow it")
    assert message(images, "http://none.example.com/a.png") == "host 'none.example.com' has no addresses"
    assert "refused: '::1' resolves to a loopback address" in message(images, "http://[::1]:8080/a.png")
    assert transport.requests == []
    assert images.load("https://img.example.com/a.png", "p").size == (40, 30)
    assert images.load("http://img.example.com:8080/a.png", "p").size == (40, 30)
    assert seen[-2:] == [("img.example.com", 443), ("img.example.com", 8080)]
    assert not any(host.startswith("[") or host == "::1" for host, _ in seen)  # literal IPs are not resolved

    def broken(host):
        raise OSError("no DNS")

    no_dns, _, _ = fetching(png_response, resolve=broken)
    assert message(no_dns, "http://img.example.com/a.png") == "cannot resolve host 'img.example.com'"


def test_allowed_domains_take_subdomains_only():
    images, transport, _ = fetching(png_response, allowed_domains=("ok.example.com",))
    assert images.load("https://ok.example.com/a.png", "p").size == (40, 30)
    assert images.load("https://cdn.ok.example.com/a.png", "p").size == (40, 30)
    assert message(images, "https://notok.example.com/a.png") == "host 'notok.example.com' is not in the allowed domains"
    assert message(images, "https://example.com/a.png") == "host 'example.com' is not in the allowed domains"
    assert len(transport.requests) == 2


def test_private_addresses_can_be_allowed_and_the_first_address_is_used():
    images, transport, _ = fetching(png_response, resolve=lambda host: ["10.0.0.5", "10.0.0.6"], allow_private_addresses=True)
    assert images.load("http://inside.example.com/a.png", "p").size == (40, 30)
    assert transport.requests[0].url.host == "10.0.0.5"


# -- fetching --------------------------------------------------------------------------------------------


def test_what_a_fetch_sends():
    images, transport, seen = fetching(png_response, timeout=2.5)
    images.load("https://img.example.com:8443/a.png?x=1", "p")
    images.load("http://img.example.com/a.png", "p")
    assert seen[-1] == ("img.example.com", 80)
    assert transport.requests[1].url.port in (None, 80)
    sent = transport.requests[0]
    assert sent.extensions["timeout"] == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}
    assert (sent.url.host, sent.url.port, sent.url.path, sent.url.query) == (PUBLIC, 8443, "/a.png", b"x=1")
    assert sent.headers["host"] == "img.example.com:8443" and sent.headers["accept"] == "image/*"
    assert sent.extensions["sni_hostname"] == "img.example.com"
    assert sent.method == "GET"


@pytest.mark.parametrize(
    ("answer", "text"),
    [
        (httpx.Response(404), "fetching the image failed with HTTP 404"),
        (httpx.Response(302), "redirect without a Location header"),
        (httpx.Response(302, headers={"location": "ftp://files.example.com/a.png"}), "redirected to a non-http(s) URL 'ftp://files.example.com/a.png'"),
        (httpx.Response(200, content=b"<html>", headers={"content-type": "Text/HTML; charset=utf-8"}), "server sent 'text/html', not an image"),
        (httpx.Response(200, content=PNG[:10], headers={"content-type": "image/png", "content-length": "999999"}), "image is larger than 1000 bytes (ImagePolicy.max_bytes)"),
        (httpx.Response(200, content=iter([b"\0" * 600, b"\0" * 401]), headers={"content-type": "image/png"}), "image is larger than 1000 bytes (ImagePolicy.max_bytes)"),
        (httpx.Response(302, headers={"location": "ftp://files.example.com/" + "x" * 100}), "redirected to a non-http(s) URL " + repr(("ftp://files.example.com/" + "x" * 100)[:80])),
    ],
)
def test_fetch_failures_say_what_happened(answer, text):
    images, _, _ = fetching(lambda request: answer, max_bytes=1000)
    assert text == message(images, "https://img.example.com/a.png")


def test_a_body_in_pieces_is_joined():
    images, _, _ = fetching(lambda request: httpx.Response(200, content=iter([PNG[:20], PNG[20:50], PNG[50:]]), headers={"content-type": "image/png"}))
    assert images.load("https://img.example.com/a.png", "p").size == (40, 30)


def test_fetch_limits_at_the_boundary_and_content_types():
    exact, _, _ = fetching(png_response, max_bytes=len(PNG))
    assert exact.load("https://img.example.com/a.png", "p").size == (40, 30)  # exactly the limit
    for ctype in ("image/png; charset=binary", ""):
        loose, _, _ = fetching(lambda request, ctype=ctype: httpx.Response(200, content=PNG, headers={"content-type": ctype} if ctype else {}))
        assert loose.load("https://img.example.com/a.png", "p").size == (40, 30)
    declared, _, _ = fetching(lambda request: httpx.Response(200, content=PNG, headers={"content-type": "image/png", "content-length": "abc"}))
    assert declared.load("https://img.example.com/a.png", "p").size == (40, 30)  # a malformed length is ignored


def test_redirects_are_followed_relative_and_counted():
    hops = iter([httpx.Response(301, headers={"location": "/b.png"}), httpx.Response(307, headers={"location": "https://cdn.example.com/c.png"}), png_response()])
    images, transport, seen = fetching(lambda request: next(hops), max_redirects=2)
    assert images.load("https://img.example.com/a.png", "p").size == (40, 30)
    assert [(r.headers["host"], r.url.path) for r in transport.requests] == [("img.example.com", "/a.png"), ("img.example.com", "/b.png"), ("cdn.example.com", "/c.png")]
    assert [host for host, _ in seen] == ["img.example.com", "img.example.com", "cdn.example.com"]  # each hop checked
    none, transport, _ = fetching(lambda request: httpx.Response(302, headers={"location": "/again"}), max_redirects=0)
    assert message(none, "https://img.example.com/a.png") == "more than 0 redirects"
    assert len(transport.requests) == 1


def test_transport_errors_and_bad_urls():
    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    images, _, _ = fetching(refuse)
    assert message(images, "https://img.example.com/a.png") == "fetching the image failed: ConnectError"
    assert message(images, "http://[::1/a.png") == "invalid image URL"

    def slow(request):
        raise httpx.ReadTimeout("slow", request=request)

    late, _, _ = fetching(slow, timeout=2.5)
    assert message(late, "https://img.example.com/a.png") == "fetching the image timed out after 2.5s"


# -- decoding and counts ---------------------------------------------------------------------------------


def test_decoding_limits_and_modes():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (20, 10), (1, 2, 3, 4)).save(buf, "PNG")
    rgba = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    at_limit = ImageLoader(ImagePolicy(max_decoded_pixels=200))
    image = at_limit.load(rgba, "p")
    assert (image.size, image.mode, image.getpixel((0, 0))) == ((20, 10), "RGB", (1, 2, 3))
    over = ImageLoader(ImagePolicy(max_decoded_pixels=199))
    assert message(over, rgba) == "image is 20x10 pixels, over the limit of 199 (ImagePolicy.max_decoded_pixels)"
    assert message(at_limit, "data:image/png;base64,aGVsbG8=") == "not a decodable image (UnidentifiedImageError)"
    truncated = "data:image/png;base64," + base64.b64encode(buf.getvalue()[:60]).decode()
    assert "not a decodable image" in message(at_limit, truncated)


def test_image_counts():
    one = png_data_uri(size=(4, 4))
    images = ImageLoader(ImagePolicy(max_images=2))
    assert [i.size for i in images.load_all([(one, "a"), (one, "b")])] == [(4, 4), (4, 4)]
    with pytest.raises(ImageError) as caught:
        images.load_all([(one, "a"), (one, "b"), (one, "c")])
    assert caught.value.path == "c" and "3 images in one request; the limit is 2 (ImagePolicy.max_images)" in str(caught.value)
    assert ImageLoader().load_all([]) == []
    with pytest.raises(ImageError) as caught:
        images.load_all([(one, "a"), ("data:image/png;base64,@@", "b")])
    assert caught.value.path == "b"
    assert ImageLoader().load(png_data_uri(size=(1, 1)), "p").size == (1, 1)  # one pixel is an image

"""Fetching and decoding the images of a request, with limits and no way into private networks.

http(s) URLs are resolved first and every address is checked (loopback, private, link-local,
cloud metadata and other reserved ranges are refused unless allowed); the connection then goes
to the checked address itself, so a second DNS answer cannot redirect it, and every redirect hop
is checked again. Downloads stop at the byte limit; decoding stops at the pixel limit.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import httpx

from .._exceptions import ImageError

Resolver = Callable[[str, int], list[str]]


@dataclass(frozen=True)
class ImagePolicy:
    """Limits for images in requests to the local backend. Every field has a safe default."""

    timeout: float = 5.0
    """Seconds for the whole download of one image."""
    max_bytes: int = 20 * 1024 * 1024
    """Largest download or decoded data: URI, in bytes."""
    max_decoded_pixels: int = 64_000_000
    """Largest decoded image (width x height): refuses decompression bombs. (Not the model's
    image budget: that is the backend's ``max_image_pixels``, which resizes.)"""
    max_images: int = 16
    """Most images in one request."""
    max_redirects: int = 3
    allowed_domains: tuple[str, ...] | None = None
    """If set, only these hosts (and their subdomains) may be fetched."""
    allow_private_addresses: bool = False
    """Allow loopback, private, link-local and other non-public addresses (off by default)."""
    allowed_local_dir: str | None = None
    """If set, ``file://`` URLs may read images under this directory (and nowhere else)."""
    content_types: tuple[str, ...] = ("image/",)


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _address_refused(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives here)"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified or not ip.is_global:
        return "a non-public address"
    return None


class ImageLoader:
    def __init__(self, policy: ImagePolicy | None = None, *, resolver: Resolver | None = None, http_transport: httpx.BaseTransport | None = None) -> None:
        self.policy = policy or ImagePolicy()
        self._resolve = resolver or _system_resolver
        self._transport = http_transport

    def load_all(self, refs: Sequence[tuple[str, str]]) -> list[Any]:
        if len(refs) > self.policy.max_images:
            raise ImageError(
                f"{len(refs)} images in one request; the limit is {self.policy.max_images} "
                "(ImagePolicy.max_images)", path=refs[self.policy.max_images][1]
            )
        return [self.load(url, where) for url, where in refs]

    def load(self, url: str, where: str) -> Any:
        scheme = url.split(":", 1)[0].lower()
        if scheme == "data":
            data = self._decode_data_uri(url, where)
        elif scheme in ("http", "https"):
            data = self._fetch(url, where)
        elif scheme == "file":
            data = self._read_file(url, where)
        else:
            raise ImageError(f"unsupported image URL scheme {scheme!r}", path=where)
        return self._decode(data, where)

    # -- sources ------------------------------------------------------------------------------

    def _decode_data_uri(self, url: str, where: str) -> bytes:
        header, sep, payload = url.partition(",")
        if not sep:
            raise ImageError("malformed data: URI (no comma)", path=where)
        media_type = header[5:].split(";", 1)[0].lower()
        if media_type and not media_type.startswith(self.policy.content_types):
            raise ImageError(f"data: URI media type {media_type!r} is not an image", path=where)
        too_large = ImageError(f"data: URI is larger than {self.policy.max_bytes} bytes (ImagePolicy.max_bytes)", path=where)
        if header.endswith(";base64"):
            if len(payload) > self.policy.max_bytes * 4 // 3 + 4:
                raise too_large
            try:
                return base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise ImageError("data: URI has invalid base64", path=where) from None
        if len(payload) > self.policy.max_bytes * 3:  # "%XX" per byte at the most
            raise too_large
        data = unquote_to_bytes(payload)  # RFC 2397: %XX escapes are octets, not UTF-8
        if len(data) > self.policy.max_bytes:
            raise too_large
        return data

    def _read_file(self, url: str, where: str) -> bytes:
        root = self.policy.allowed_local_dir
        if not root:
            raise ImageError("local files are off; set ImagePolicy.allowed_local_dir to allow a directory", path=where)
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ImageError("file: URLs must name a local path", path=where)
        target = Path(unquote(parts.path)).resolve()
        base = Path(root).resolve()
        if not target.is_relative_to(base):
            raise ImageError(f"file is outside the allowed directory {str(base)!r}", path=where)
        try:
            size = target.stat().st_size
            if size > self.policy.max_bytes:
                raise ImageError(f"file is larger than {self.policy.max_bytes} bytes", path=where)
            return target.read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read file: {exc.strerror}", path=where) from None

    def _check_host(self, host: str, port: int, where: str) -> str:
        allowed = self.policy.allowed_domains
        if allowed is not None and not any(host == d or host.endswith("." + d) for d in allowed):
            raise ImageError(f"host {host!r} is not in the allowed domains", path=where)
        try:
            addresses = [host] if _is_ip(host) else self._resolve(host, port)
        except OSError:
            raise ImageError(f"cannot resolve host {host!r}", path=where) from None
        if not addresses:
            raise ImageError(f"host {host!r} has no addresses", path=where)
        if not self.policy.allow_private_addresses:
            for address in addresses:
                why = _address_refused(address)
                if why:
                    raise ImageError(
                        f"refused: {host!r} resolves to {why} ({address}); set "
                        "ImagePolicy.allow_private_addresses=True to allow it",
                        path=where,
                    )
        return addresses[0]

    def _fetch(self, url: str, where: str) -> bytes:
        policy = self.policy
        with httpx.Client(transport=self._transport, timeout=policy.timeout, follow_redirects=False) as client:
            for _ in range(policy.max_redirects + 1):
                try:
                    parsed = httpx.URL(url)
                except httpx.InvalidURL:
                    raise ImageError("invalid image URL", path=where) from None
                if parsed.scheme not in ("http", "https") or not parsed.host:
                    raise ImageError(f"redirected to a non-http(s) URL {str(parsed)[:80]!r}", path=where)
                port = parsed.port or (443 if parsed.scheme == "https" else 80)
                address = self._check_host(parsed.host, port, where)
                pinned = parsed.copy_with(host=address)
                headers = {"Host": parsed.netloc.decode("ascii"), "Accept": "image/*"}
                try:
                    with client.stream(
                        "GET", pinned, headers=headers, extensions={"sni_hostname": parsed.host}
                    ) as response:
                        if response.is_redirect:
                            location = response.headers.get("location")
                            if not location:
                                raise ImageError("redirect without a Location header", path=where)
                            url = str(parsed.join(location))
                            continue
                        if response.status_code != 200:
                            raise ImageError(f"fetching the image failed with HTTP {response.status_code}", path=where)
                        ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
                        if ctype and not ctype.startswith(policy.content_types):
                            raise ImageError(f"server sent {ctype!r}, not an image", path=where)
                        declared = response.headers.get("content-length")
                        if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                            raise ImageError(f"image is larger than {policy.max_bytes} bytes (ImagePolicy.max_bytes)", path=where)
                        body = bytearray()
                        for piece in response.iter_bytes():
                            body += piece
                            if len(body) > policy.max_bytes:
                                raise ImageError(f"image is larger than {policy.max_bytes} bytes (ImagePolicy.max_bytes)", path=where)
                        return bytes(body)
                except httpx.TimeoutException:
                    raise ImageError(f"fetching the image timed out after {policy.timeout}s", path=where) from None
                except httpx.HTTPError as exc:
                    raise ImageError(f"fetching the image failed: {type(exc).__name__}", path=where) from None
        raise ImageError(f"more than {policy.max_redirects} redirects", path=where)

    # -- decoding ----------------------------------------------------------------------------

    def _decode(self, data: bytes, where: str) -> Any:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                if width * height > self.policy.max_decoded_pixels:
                    raise ImageError(
                        f"image is {width}x{height} pixels, over the limit of {self.policy.max_decoded_pixels} "
                        "(ImagePolicy.max_decoded_pixels)",
                        path=where,
                    )
                probe.load()
                image = probe.convert("RGB")
        except ImageError:
            raise
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
            raise ImageError(f"not a decodable image ({type(exc).__name__})", path=where) from None
        if min(image.size) < 1:
            raise ImageError("image is empty", path=where)
        return image


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def file_url(path: str | os.PathLike[str]) -> str:
    return Path(path).resolve().as_uri()

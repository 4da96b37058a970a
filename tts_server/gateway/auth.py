"""Who is calling: bearer tokens (stored as SHA-256 hashes) or the client's address."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from tts_server.config import AuthSettings, ConfigError, TokenSettings, coerce

LOG = logging.getLogger("tts.auth")


def hash_token(token: str) -> str:
    """SHA-256 of the token's bytes. aiohttp decodes header bytes as UTF-8 with
    surrogateescape, so undecodable bytes come back as they were sent; UnicodeEncodeError
    is left for a token that cannot come from a header (TokenStore.find: no match)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_token() -> str:
    return "tts_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Identity:
    """The caller as the limiter and the scheduler see it; travels on the request."""

    name: str
    tier: str
    # Limiter key: the token's name, or "ip:<address>" for anonymous callers.
    key: str
    token: TokenSettings | None = None


def load_tokens_file(path: str) -> tuple[TokenSettings, ...]:
    """A TOML file of [[tokens]] tables (name, sha256, tier, optional limit overrides)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"auth.tokens_file {path}: {exc}") from exc
    return coerce(f"{path}:tokens", data.get("tokens", []), tuple[TokenSettings, ...])


class TokenStore:
    """Hash -> token; lookups hash the presented token and compare digests in constant time."""

    def __init__(self, settings: AuthSettings, known_tiers: set[str]) -> None:
        self.settings = settings
        self.known_tiers = known_tiers
        self._by_hash: dict[str, TokenSettings] = {}
        self.reload()

    def reload(self) -> None:
        tokens = list(self.settings.tokens)
        if self.settings.tokens_file:
            tokens.extend(load_tokens_file(self.settings.tokens_file))
        for token in tokens:
            if token.tier not in self.known_tiers:
                raise ConfigError(f"token {token.name!r}: unknown tier {token.tier!r}")
        self._by_hash = {t.sha256.lower(): t for t in tokens}
        LOG.info("auth: %d tokens loaded", len(self._by_hash))

    def __len__(self) -> int:
        return len(self._by_hash)

    def find(self, presented: str) -> TokenSettings | None:
        try:
            digest = hash_token(presented)
        except UnicodeEncodeError:
            return None
        match = None
        for known, token in self._by_hash.items():
            # Compare against every entry so timing does not reveal which prefix matched.
            if hmac.compare_digest(known, digest):
                match = token
        return match


def bearer_token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_networks(addresses: tuple[str, ...]) -> list[Network]:
    return [ipaddress.ip_network(a, strict=False) for a in addresses]


class ClientAddress:
    """The caller's address; X-Forwarded-For only counts when the peer is a trusted proxy."""

    def __init__(self, trusted_proxies: tuple[str, ...]) -> None:
        self.trusted = _parse_networks(trusted_proxies)

    def is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def of(self, request: web.Request) -> str:
        peer = request.remote or "unknown"
        if not self.trusted or not self.is_trusted(peer):
            return peer
        forwarded = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",")]
        # Walk from the nearest hop back; the first untrusted address is the client.
        for address in reversed([a for a in forwarded if a]):
            if not self.is_trusted(address):
                return address
        return peer


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False

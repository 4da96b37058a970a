"""The gateway in front of every route: who is calling, may they, and how often.

Rejections are cheap: authentication and the requests-per-second limit run before the
body is read; the characters-per-minute limit runs once the text is known.
"""

from __future__ import annotations

import collections
import logging
import math
import time

from aiohttp import web

from tts_server.config import Settings, TierSettings
from tts_server.errors import (
    Forbidden,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from tts_server.gateway.auth import ClientAddress, Identity, TokenStore, bearer_token, is_loopback
from tts_server.gateway.ratelimit import Decision, LocalLimiter, Rate, RedisLimiter

LOG = logging.getLogger("tts.gateway")


class Gateway:
    def __init__(self, settings: Settings, redis_limiter: RedisLimiter | None = None) -> None:
        self.settings = settings
        self.tiers = settings.limits.tiers
        self.tokens = TokenStore(settings.auth, set(self.tiers))
        self.addresses = ClientAddress(settings.auth.trusted_proxies)
        self.local = LocalLimiter()
        self.redis = redis_limiter
        self._redis_down = False
        self._redis_retry_at = 0.0
        self.rejections: collections.Counter[str] = collections.Counter()
        self.anonymous_allowed = settings.anonymous_allowed  # parses addresses: once
        # No token and only loopback: the one local user may use every feature (jobs too).
        self.local_only = settings.local_only

    # ---- who ---------------------------------------------------------------------------

    def identify(self, request: web.Request) -> Identity:
        presented = bearer_token(request)
        # A server with no tokens at all is anonymous: SDKs that always send some key
        # (OpenAI's does) must work against it.
        if presented is not None and len(self.tokens):
            token = self.tokens.find(presented)
            if token is None:
                self._reject("unauthorized")
                raise Unauthorized("unknown or revoked token", code="invalid_token")
            return Identity(token.name, token.tier, f"token:{token.name}", token)
        if not self.anonymous_allowed:
            self._reject("unauthorized")
            raise Unauthorized("a bearer token is required", code="missing_token")
        address = self.addresses.of(request)
        return Identity(f"anonymous@{address}", self.settings.auth.anonymous_tier, f"ip:{address}")

    def tier(self, identity: Identity) -> TierSettings:
        return self.tiers[identity.tier]

    def may_use(self, identity: Identity, feature: str) -> bool:
        if self.local_only and identity.token is None:
            return True
        return feature in self.tier(identity).features

    def require_feature(self, identity: Identity, feature: str) -> None:
        if not self.may_use(identity, feature):
            self._reject("forbidden")
            raise Forbidden(f"tier {identity.tier!r} may not use {feature!r}",
                            code="feature_not_allowed")

    # ---- how often ---------------------------------------------------------------------

    def request_rate(self, identity: Identity) -> Rate:
        tier, token = self.tier(identity), identity.token
        per_s = token.requests_per_s if token and token.requests_per_s else tier.requests_per_s
        burst = token.burst if token and token.burst else tier.burst
        return Rate(per_s, burst)

    def chars_rate(self, identity: Identity) -> Rate:
        tier, token = self.tier(identity), identity.token
        per_min = token.chars_per_min if token and token.chars_per_min else tier.chars_per_min
        capacity = tier.chars_burst or per_min
        return Rate(per_min / 60.0, capacity)

    async def _check(self, key: str, rate: Rate, cost: float) -> Decision:
        if self.redis is None:
            return self.local.check(key, rate, cost)
        if time.monotonic() < self._redis_retry_at:  # down: not retried on every request
            return self._redis_unreachable(key, rate, cost)
        try:
            decision = await self.redis.check(key, rate, cost)
        except ConnectionError as exc:
            self._redis_failed(exc)
            return self._redis_unreachable(key, rate, cost)
        if self._redis_down:
            self._redis_down = False
            LOG.warning("rate limiter: redis is back")
        return decision

    def _redis_failed(self, exc: Exception) -> None:
        """One warning per outage, not per request; retry Redis after limits.redis_retry_s."""
        self._redis_retry_at = time.monotonic() + self.settings.limits.redis_retry_s
        if not self._redis_down:
            self._redis_down = True
            LOG.warning("rate limiter: redis unreachable (%s); policy %s until it is back",
                        exc, self.settings.limits.on_redis_error)

    def _redis_unreachable(self, key: str, rate: Rate, cost: float) -> Decision:
        policy = self.settings.limits.on_redis_error
        self.rejections["redis_error"] += 1
        if policy == "closed":
            raise ServiceUnavailable("rate limiter unavailable", code="limiter_unavailable",
                                     retry_after_s=self.settings.server.retry_after_s)
        if policy == "open":
            return Decision(True, int(rate.burst), int(rate.burst), 0.0, 0.0)
        return self.local.check(key, rate, cost)

    async def check_requests(self, identity: Identity) -> Decision | None:
        """This request against the caller's requests per second (None: limits are off)."""
        if not self.settings.limits.enabled:
            return None
        return await self._check("req:" + identity.key, self.request_rate(identity), 1.0)

    def enforce_requests(self, identity: Identity, decision: Decision) -> None:
        if not decision.allowed:
            self._reject("rate_requests")
            raise TooManyRequests(
                f"more than {self.request_rate(identity).per_s:g} requests per second",
                code="rate_limited", retry_after_s=max(1, math.ceil(decision.retry_after_s)),
            )

    async def charge_chars(self, identity: Identity, chars: int) -> None:
        """Spend `chars` of the caller's characters-per-minute budget, or answer 429."""
        if not self.settings.limits.enabled:
            return
        rate = self.chars_rate(identity)
        if chars > rate.burst:
            self._reject("chars_exceed_budget")
            raise PayloadTooLarge(f"{chars} characters exceed the tier's budget of "
                                  f"{int(rate.burst)}", code="text_exceeds_quota")
        decision = await self._check("chars:" + identity.key, rate, float(chars))
        if not decision.allowed:
            self._reject("rate_chars")
            raise TooManyRequests(
                f"character quota of {rate.per_s * 60:g} per minute used up",
                code="char_quota_exceeded",
                retry_after_s=max(1, math.ceil(decision.retry_after_s)),
            )

    def _reject(self, reason: str) -> None:
        self.rejections[reason] += 1

    # ---- route policies ----------------------------------------------------------------

    def check_policy(self, request: web.Request, policy: str) -> None:
        if policy == "open":
            return
        if policy == "loopback":
            # The client's address, not the peer's: behind a local proxy every peer is
            # loopback (X-Forwarded-For counts only from auth.trusted_proxies).
            if not is_loopback(self.addresses.of(request)):
                self._reject("policy")
                raise Forbidden("only reachable from this machine", code="loopback_only")
            return
        self._require_token(request)

    def _require_token(self, request: web.Request) -> None:
        """The "token" policy: a valid token, even where anonymous callers may use the API."""
        presented = bearer_token(request)
        if presented is None:
            self._reject("unauthorized")
            raise Unauthorized("a bearer token is required", code="missing_token")
        if self.tokens.find(presented) is None:
            self._reject("unauthorized")
            raise Unauthorized("unknown or revoked token", code="invalid_token")


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(math.ceil(decision.reset_s)),
    }

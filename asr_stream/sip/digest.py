"""Digest authentication of incoming requests (RFC 3261 §22, RFC 7616, RFC 8760).

Written by hand with hashlib/hmac: aiosipua only answers challenges (the UAC side), and the
digest code in Python libraries we looked at is for HTTP clients; none issues expiring nonces,
tracks nonce counts against replay or compares in constant time, which is what a UAS needs.
Only qop="auth" is offered: auth-int would hash the body, and SBCs rarely implement it.

Nonces carry no server state: issue time, random bytes and an HMAC under a per-process key, so a
flood of unauthenticated INVITEs costs no memory. A nonce is remembered (with the highest nonce
count seen) only once it has authenticated a request, which is what stops a captured request
from being replayed. A restart changes the key; older nonces are then answered stale=true, which
well-behaved clients retry with the same password and no user interaction.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from aiosipua import parse_auth

# RFC 8760 names; the order of `DigestAuthConfig.algorithms` is the order clients are offered them.
ALGORITHMS: Mapping[str, Callable[[bytes], hashlib._Hash]] = {
    "SHA-256": hashlib.sha256,
    "SHA-512-256": lambda data: hashlib.new("sha512_256", data),
    "MD5": hashlib.md5,
}
# ACK and CANCEL cannot be resubmitted with credentials (RFC 3261 §22.1), so they are never challenged.
CHALLENGEABLE = frozenset({"INVITE", "BYE", "OPTIONS"})
_NONCE_COUNT = re.compile(r"^[0-9a-fA-F]{8}$")


def hash_hex(algorithm: str, text: str) -> str:
    """H(text) in lower-case hex; strings are hashed as UTF-8 (RFC 7616 §3.4.1)."""
    return ALGORITHMS[algorithm](text.encode()).hexdigest()


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username:realm:password): what a credential store may keep instead of the password."""
    return hash_hex(algorithm, f"{username}:{realm}:{password}")


def digest_response(algorithm: str, ha1_hex: str, *, nonce: str, nc: str, cnonce: str, method: str, uri: str) -> str:
    """The `response` parameter for qop=auth: KD(HA1, nonce:nc:cnonce:auth:H(method:uri)) (RFC 7616 §3.4.1)."""
    ha2 = hash_hex(algorithm, f"{method}:{uri}")
    return hash_hex(algorithm, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:auth:{ha2}")


@dataclass(frozen=True)
class DigestCredential:
    """One user's secret: the password, or its HA1 per algorithm (so no password sits in config).

    Both fields are left out of repr() so that logging a config never prints a secret.
    """

    password: str | None = field(default=None, repr=False)
    ha1: Mapping[str, str] = field(default_factory=dict, repr=False)  # algorithm -> hex HA1

    def ha1_for(self, algorithm: str, username: str, realm: str) -> str | None:
        if algorithm in self.ha1:
            return self.ha1[algorithm].lower()
        if self.password is not None:
            return ha1(algorithm, username, realm, self.password)
        return None


@dataclass(frozen=True)
class DigestAuthConfig:
    """Who may send which requests; `proxy` answers 407/Proxy-Authenticate instead of 401."""

    realm: str
    users: Mapping[str, DigestCredential] = field(default_factory=dict, repr=False)
    methods: tuple[str, ...] = ("INVITE",)
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    proxy: bool = False
    nonce_ttl_s: float = 300.0
    max_tracked_nonces: int = 10_000  # nonces in use at once; beyond it the oldest turn stale

    def __post_init__(self) -> None:
        if not self.realm or any(c in self.realm for c in '"\\\r\n'):
            raise ValueError("the digest realm must be non-empty text without quotes, backslashes or line breaks")
        unknown = [a for a in self.algorithms if a not in ALGORITHMS]
        if not self.algorithms or unknown:
            raise ValueError(f"digest algorithms must be some of {', '.join(ALGORITHMS)}, not {unknown or 'none'}")
        if not set(self.methods) <= CHALLENGEABLE:
            raise ValueError(f"only {', '.join(sorted(CHALLENGEABLE))} can be challenged, not {self.methods}")
        if self.nonce_ttl_s <= 0 or self.max_tracked_nonces < 1:
            raise ValueError("nonce_ttl_s and max_tracked_nonces must be positive")
        empty = [user for user, credential in self.users.items() if credential.password is None and not credential.ha1]
        if empty:
            raise ValueError(f"users without a password or HA1: {', '.join(empty)}")


class Verdict(StrEnum):
    """What `DigestAuthenticator.verify` concluded; also the key of the server's auth counters."""

    OK = "ok"
    MISSING = "missing"  # no credentials for our realm: challenge
    STALE = "stale"  # right password, nonce expired or from before a restart: challenge stale=true
    REPLAYED = "replayed"  # nonce count not above the last one accepted for this nonce
    FAILED = "failed"  # wrong password, unknown user, or credentials that do not fit the request


@dataclass(frozen=True)
class AuthResult:
    verdict: Verdict
    username: str = ""  # as claimed by the client, for the log; never the secret


class DigestAuthenticator:
    """Issues challenges and verifies the credentials sent back."""

    def __init__(self, config: DigestAuthConfig) -> None:
        self.config = config
        self._key = secrets.token_bytes(32)
        self._opaque = secrets.token_hex(16)
        self._accepted: dict[str, tuple[int, int]] = {}  # nonce -> (issued ms, highest nc)
        self._stale_up_to_ms = -1  # nonces issued until then were forgotten early: treat as stale
        # A credential the unknown users are checked against, so they cost the same time as known ones.
        self._decoy = DigestCredential(password=secrets.token_hex(16))

    @property
    def status(self) -> int:
        return 407 if self.config.proxy else 401

    @property
    def challenge_header(self) -> str:
        return "Proxy-Authenticate" if self.config.proxy else "WWW-Authenticate"

    @property
    def credentials_header(self) -> str:
        return "Proxy-Authorization" if self.config.proxy else "Authorization"

    def challenges(self, *, stale: bool = False) -> list[str]:
        """One challenge per algorithm, preferred first, sharing one fresh nonce (RFC 8760 §2.4)."""
        nonce = self._new_nonce()
        tail = ", stale=true" if stale else ""
        return [
            f'Digest realm="{self.config.realm}", nonce="{nonce}", opaque="{self._opaque}", algorithm={algorithm}, qop="auth"{tail}'
            for algorithm in self.config.algorithms
        ]

    def verify(self, method: str, header_values: Sequence[str]) -> AuthResult:
        """Check the Authorization (or Proxy-Authorization) values of a request against our realm.

        The response digest is checked before the nonce, so that "stale" is only ever said to a
        client that knows the password (RFC 7616 §3.3: stale means the digest itself was valid).
        The digest-uri is hashed as sent, not compared with the Request-URI: proxies rewrite the
        Request-URI (RFC 3261 §22.4 asks only for "the same resource"), SIPp 3.6.1 leaves out its
        user part, and what such a check would prevent, reuse of captured credentials, the
        nonce count already stops.
        """
        params = self._credentials_for_our_realm(header_values)
        if params is None:
            return AuthResult(Verdict.MISSING)
        username = params.get("username", "")
        algorithm = params.get("algorithm", "MD5").upper()
        nonce, nc, cnonce, uri = (params.get(name, "") for name in ("nonce", "nc", "cnonce", "uri"))
        fits = (
            algorithm in self.config.algorithms
            and params.get("qop", "").lower() == "auth"
            and bool(_NONCE_COUNT.match(nc))
            and bool(cnonce)
            and bool(uri)
        )
        if not fits:
            return AuthResult(Verdict.FAILED, username)
        credential = self.config.users.get(username, self._decoy)
        secret = credential.ha1_for(algorithm, username, self.config.realm) or self._decoy.ha1_for(algorithm, "", "")
        assert secret is not None  # the decoy has a password
        expected = digest_response(algorithm, secret, nonce=nonce, nc=nc, cnonce=cnonce, method=method, uri=uri)
        matches = hmac.compare_digest(expected, params.get("response", "").lower())
        if not matches or username not in self.config.users:
            return AuthResult(Verdict.FAILED, username)
        if not hmac.compare_digest(params.get("opaque", ""), self._opaque):  # issued before a restart
            return AuthResult(Verdict.STALE, username)
        return AuthResult(self._use_nonce(nonce, int(nc, 16)), username)

    def _credentials_for_our_realm(self, header_values: Sequence[str]) -> dict[str, str] | None:
        """The parameters of the Digest credentials for our realm (others are for proxies on the path)."""
        for value in header_values:
            credentials = parse_auth(value, credentials=True)
            params = {key.lower(): val for key, val in credentials.params.items()}
            if credentials.scheme.lower() == "digest" and params.get("realm") == self.config.realm:
                return params
        return None

    def _new_nonce(self) -> str:
        body = f"{_now_ms():x}.{secrets.token_hex(8)}"
        return f"{body}.{self._mac(body)}"

    def _mac(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()[:32]

    def _issued_ms(self, nonce: str) -> int | None:
        """When we issued this nonce, or None if we did not (forged, or from before a restart)."""
        body, _, mac = nonce.rpartition(".")
        if not body or not hmac.compare_digest(mac, self._mac(body)):
            return None
        return int(body.split(".", 1)[0], 16)

    def _use_nonce(self, nonce: str, nc: int) -> Verdict:
        """Accept this nonce count once: it must be fresh and above every count accepted before."""
        issued = self._issued_ms(nonce)
        now = _now_ms()
        if issued is None or issued <= self._stale_up_to_ms or now - issued > self.config.nonce_ttl_s * 1000:
            return Verdict.STALE
        _, highest = self._accepted.get(nonce, (issued, 0))
        if nc <= highest:
            return Verdict.REPLAYED
        self._accepted[nonce] = (issued, nc)
        if len(self._accepted) > self.config.max_tracked_nonces:
            self._forget_oldest(now)
        return Verdict.OK

    def _forget_oldest(self, now: int) -> None:
        """Drop expired nonces; if still too many, drop the oldest and make its age group stale.

        Forgetting a nonce while it is still valid would let its requests be replayed, so every
        nonce issued up to the forgotten one's time is answered stale=true from then on.
        """
        ttl_ms = self.config.nonce_ttl_s * 1000
        self._accepted = {n: entry for n, entry in self._accepted.items() if now - entry[0] <= ttl_ms}
        while len(self._accepted) > self.config.max_tracked_nonces:
            oldest = min(self._accepted, key=lambda n: self._accepted[n][0])
            self._stale_up_to_ms = max(self._stale_up_to_ms, self._accepted.pop(oldest)[0])


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000

"""Digest math against RFC 7616's published example, and the authenticator's nonce rules.

The network side (401/407 on the wire, SIPp's [authentication]) is in test_sip_security.py;
here each rule of `DigestAuthenticator.verify` is pinned on its own, with real time (short TTLs).
"""

from __future__ import annotations

import time

import pytest

from asr_stream.sip.access import SourceFilter
from asr_stream.sip.digest import (
    DigestAuthConfig,
    DigestAuthenticator,
    DigestCredential,
    Verdict,
    digest_response,
    ha1,
)

# RFC 7616 §3.9.1: the same request answered with MD5 and with SHA-256.
RFC7616_EXAMPLE = {
    "username": "Mufasa",
    "realm": "http-auth@example.org",
    "password": "Circle of Life",
    "method": "GET",
    "uri": "/dir/index.html",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "nc": "00000001",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
}
RFC7616_RESPONSES = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}
REALM = "asr.test"
URI = "sip:asr@127.0.0.1:5060"


@pytest.mark.parametrize("algorithm", sorted(RFC7616_RESPONSES))
def test_response_matches_rfc7616_example(algorithm: str) -> None:
    e = RFC7616_EXAMPLE
    secret = ha1(algorithm, e["username"], e["realm"], e["password"])
    response = digest_response(algorithm, secret, nonce=e["nonce"], nc=e["nc"], cnonce=e["cnonce"], method=e["method"], uri=e["uri"])
    assert response == RFC7616_RESPONSES[algorithm]


def authenticator(**options: object) -> DigestAuthenticator:
    users = {"alice": DigestCredential(password="secret")}
    return DigestAuthenticator(DigestAuthConfig(realm=REALM, users=users, **options))  # type: ignore[arg-type]


def challenge_params(challenge: str) -> dict[str, str]:
    scheme, _, rest = challenge.partition(" ")
    assert scheme == "Digest"
    pairs = (item.strip().split("=", 1) for item in rest.split(", "))
    return {key: value.strip('"') for key, value in pairs}


def answer(challenge: str, *, password: str = "secret", username: str = "alice", nc: int = 1, method: str = "INVITE") -> str:
    """An Authorization value as a UAC builds it from one of our challenges."""
    params = challenge_params(challenge)
    algorithm = params["algorithm"]
    secret = ha1(algorithm, username, params["realm"], password)
    nc_hex, cnonce = f"{nc:08x}", f"cnonce{nc}"
    response = digest_response(algorithm, secret, nonce=params["nonce"], nc=nc_hex, cnonce=cnonce, method=method, uri=URI)
    return (
        f'Digest username="{username}", realm="{params["realm"]}", nonce="{params["nonce"]}", uri="{URI}", '
        f'response="{response}", algorithm={algorithm}, cnonce="{cnonce}", nc={nc_hex}, qop=auth, '
        f'opaque="{params["opaque"]}"'
    )


def test_challenges_offer_sha256_first_then_md5_with_one_fresh_nonce() -> None:
    auth = authenticator()
    first, second = auth.challenges()
    a, b = challenge_params(first), challenge_params(second)
    assert (a["algorithm"], b["algorithm"]) == ("SHA-256", "MD5")
    assert a["qop"] == b["qop"] == "auth" and a["realm"] == REALM and a["opaque"] == b["opaque"]
    assert a["nonce"] == b["nonce"] != challenge_params(auth.challenges()[0])["nonce"]
    assert "stale" not in first and all(c.endswith(", stale=true") for c in auth.challenges(stale=True))


@pytest.mark.parametrize("algorithm", ["SHA-256", "SHA-512-256", "MD5"])
def test_right_password_is_accepted_once_per_nonce_count(algorithm: str) -> None:
    auth = authenticator(algorithms=(algorithm,))
    (challenge,) = auth.challenges()
    assert auth.verify("INVITE", [answer(challenge)]).verdict == Verdict.OK
    assert auth.verify("INVITE", [answer(challenge)]).verdict == Verdict.REPLAYED
    assert auth.verify("INVITE", [answer(challenge, nc=3)]).verdict == Verdict.OK
    assert auth.verify("INVITE", [answer(challenge, nc=2)]).verdict == Verdict.REPLAYED


def test_wrong_password_unknown_user_and_other_method_fail() -> None:
    auth = authenticator()
    challenge = auth.challenges()[0]
    assert auth.verify("INVITE", [answer(challenge, password="wrong")]).verdict == Verdict.FAILED
    result = auth.verify("INVITE", [answer(challenge, username="mallory")])
    assert (result.verdict, result.username) == (Verdict.FAILED, "mallory")
    # Credentials computed for OPTIONS do not authorise an INVITE (the method is in HA2).
    assert auth.verify("INVITE", [answer(challenge, method="OPTIONS")]).verdict == Verdict.FAILED


def test_credentials_for_another_realm_or_none_are_missing() -> None:
    auth = authenticator()
    challenge = auth.challenges()[0]
    assert auth.verify("INVITE", []).verdict == Verdict.MISSING
    elsewhere = answer(challenge).replace(f'realm="{REALM}"', 'realm="proxy.example"')
    assert auth.verify("INVITE", [elsewhere]).verdict == Verdict.MISSING
    assert auth.verify("INVITE", [elsewhere, answer(challenge)]).verdict == Verdict.OK


def test_tampered_opaque_qop_or_algorithm_fail() -> None:
    auth = authenticator(algorithms=("SHA-256",))
    good = answer(auth.challenges()[0])
    for tampered in (
        good.replace("qop=auth", "qop=auth-int"),
        good.replace("algorithm=SHA-256", "algorithm=MD5"),  # an algorithm we did not offer
        good.replace("nc=00000001", "nc=1"),
    ):
        assert auth.verify("INVITE", [tampered]).verdict == Verdict.FAILED, tampered


def test_expired_nonce_is_stale_only_for_the_right_password() -> None:
    auth = authenticator(nonce_ttl_s=0.05)
    challenge = auth.challenges()[0]
    time.sleep(0.1)
    assert auth.verify("INVITE", [answer(challenge)]).verdict == Verdict.STALE
    assert auth.verify("INVITE", [answer(challenge, password="wrong")]).verdict == Verdict.FAILED


def test_nonce_and_opaque_from_before_a_restart_are_stale() -> None:
    before, after = authenticator(), authenticator()
    assert after.verify("INVITE", [answer(before.challenges()[0])]).verdict == Verdict.STALE
    assert after.verify("INVITE", [answer(before.challenges()[0], password="wrong")]).verdict == Verdict.FAILED


def test_nonces_forgotten_for_room_turn_stale_instead_of_replayable() -> None:
    auth = authenticator(max_tracked_nonces=1)
    first = auth.challenges()[0]
    time.sleep(0.002)  # nonce times have millisecond resolution
    second = auth.challenges()[0]
    assert auth.verify("INVITE", [answer(first)]).verdict == Verdict.OK
    assert auth.verify("INVITE", [answer(second)]).verdict == Verdict.OK  # `first` is forgotten here
    assert auth.verify("INVITE", [answer(first)]).verdict == Verdict.STALE
    assert auth.verify("INVITE", [answer(second, nc=2)]).verdict == Verdict.OK


def test_prehashed_ha1_works_for_its_algorithm_only() -> None:
    stored = {"MD5": ha1("MD5", "alice", REALM, "secret").upper()}  # hex case must not matter
    users = {"alice": DigestCredential(ha1=stored)}
    auth = DigestAuthenticator(DigestAuthConfig(realm=REALM, users=users))
    sha256, md5 = auth.challenges()
    assert auth.verify("INVITE", [answer(md5)]).verdict == Verdict.OK
    assert auth.verify("INVITE", [answer(sha256)]).verdict == Verdict.FAILED


@pytest.mark.parametrize(
    "options",
    [
        {"algorithms": ("SHA-1",)},
        {"algorithms": ()},
        {"methods": ("INVITE", "ACK")},
        {"nonce_ttl_s": 0},
        {"users": {"bob": DigestCredential()}},
        {"realm": 'asr"test'},
        {"realm": ""},
    ],
)
def test_unusable_auth_config_is_refused(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DigestAuthConfig(**{"realm": REALM, **options})  # type: ignore[arg-type]


def test_config_repr_shows_no_secret() -> None:
    users = {"alice": DigestCredential(password="hunter2", ha1={"MD5": "0123abcd"})}
    config = DigestAuthConfig(realm=REALM, users=users)
    assert "hunter2" not in repr(config) and "0123abcd" not in repr(config)
    assert "hunter2" not in repr(users) and "0123abcd" not in repr(users)


# -- source allow-list ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("192.0.2.7", True),
        ("192.0.2.255", True),
        ("192.0.3.1", False),
        ("::ffff:192.0.2.7", True),  # an IPv4 peer on a dual-stack socket
        ("2001:db8:5::1", True),
        ("2001:db8:6::1", False),
        ("fe80::1%eth0", True),  # link-local with its scope
        ("not-an-address", False),
    ],
)
def test_source_filter_matches_ipv4_ipv6_and_mapped_addresses(host: str, allowed: bool) -> None:
    assert SourceFilter(["192.0.2.0/24", "2001:db8:5::/48", "fe80::/64"]).allows(host) is allowed


def test_empty_allow_list_allows_everyone_and_host_bits_are_a_typo() -> None:
    assert SourceFilter([]).allows("203.0.113.9")
    with pytest.raises(ValueError):
        SourceFilter(["10.1.2.3/8"])

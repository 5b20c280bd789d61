"""JWT verification of the CDS client, per CDS Hooks 2.0 (keys made here; replay cache in real Redis)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey
from prometheus_client import REGISTRY

from cds_service.api.auth import JwtVerifier, ReplayCache
from cds_service.core.errors import AuthError
from cds_service.core.settings import Settings
from cds_service.hooks.examples import hook_request
from tests.conftest import SPEC_EXAMPLES, load_example
from tests.servers import free_port, running_server

ISS = "https://ehr.example.org/"
AUD = "https://cds.example.org/cds-services/diagnosis-suggestions"
REDIS_URL = "redis://127.0.0.1:6379/15"

EC = ECKey.generate_key("P-384", parameters={"kid": "ec"})
RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa"})
JWKS = {"keys": [EC.as_dict(private=False), RSA.as_dict(private=False)]}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISS, "aud": AUD, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], alg: str = "ES384", key: Any = EC) -> str:
    return "Bearer " + jwt.encode({"alg": alg, "typ": "JWT", "kid": key.kid}, payload, key, algorithms=[alg])


def verifier(redis_url: str | None = None, **settings: Any) -> JwtVerifier:
    s = Settings(jwt_jwks={ISS: JWKS}, redis_url=redis_url, **settings)
    return JwtVerifier(s, httpx.AsyncClient(), ReplayCache(redis_url))


def verify(v: JwtVerifier, header: str | None, audiences: list[str] = [AUD]) -> dict[str, Any]:  # noqa: B006
    async def run() -> dict[str, Any]:
        try:
            return await v.verify(header, audiences)
        finally:
            await v.replay.close()  # Redis connections belong to this event loop

    return asyncio.run(run())


def test_es384_and_rs384_tokens_are_accepted() -> None:
    v = verifier()
    assert verify(v, sign(claims()))["iss"] == ISS
    assert verify(v, sign(claims(), "RS384", RSA))["iss"] == ISS


def _unsigned(payload: dict[str, Any]) -> str:
    import base64
    import json

    def part(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"Bearer {part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


def _tampered() -> str:
    token = sign(claims())
    head, payload, signature = token.split(".")
    return f"{head}.{payload}.{signature[:-4]}AAAA"


@pytest.mark.parametrize(
    ("name", "header", "reason", "claim"),
    [
        # joserfc's claims registry: `exp` passed (beyond the leeway)
        ("expired", lambda: sign(claims(exp=int(time.time()) - 3600, iat=int(time.time()) - 3900)),
         "claims invalid (ExpiredTokenError)", "exp"),
        ("wrong audience", lambda: sign(claims(aud="https://other.example.org/cds-services/x")),
         "audience is not this endpoint", None),
        ("unknown issuer", lambda: sign(claims(iss="https://evil.example.org/")), "issuer not on the allow-list", None),
        ("alg none", lambda: _unsigned(claims()), "algorithm not accepted: none", None),
        ("HS256", lambda: sign(claims(), "HS256", OctKey.generate_key(256, parameters={"kid": "ec"})),
         "algorithm not accepted: HS256", None),
        ("tampered signature", _tampered, "signature invalid (BadSignatureError)", None),
        ("no jti", lambda: sign(claims(jti=None)), "claims invalid (MissingClaimError)", "jti"),
        # joserfc's registry rejects a future `iat` (beyond the leeway) before our own "issued in the future"
        ("issued in the future", lambda: sign(claims(iat=int(time.time()) + 3600)),
         "claims invalid (InvalidClaimError)", "iat"),
        ("not yet valid", lambda: sign(claims(nbf=int(time.time()) + 3600)),
         "claims invalid (InvalidClaimError)", "nbf"),
        ("no token", lambda: None, "no bearer token", None),
        ("garbage", lambda: "Bearer abc.def", "malformed token", None),  # its header is not base64 JSON
    ],
)  # fmt: skip
def test_bad_tokens_are_rejected(name: str, header: Any, reason: str, claim: str | None) -> None:
    """Each is rejected for its own reason: the one logged, and (up to its parenthesis or colon: never a value
    the client chose) the metric's label."""
    label = reason.split(" (")[0].split(":")[0]
    before = REGISTRY.get_sample_value("cds_auth_failures_total", {"reason": label}) or 0.0
    with pytest.raises(AuthError) as rejected:
        verify(verifier(), header())
    assert str(rejected.value) == reason
    assert getattr(rejected.value.__cause__, "claim", None) == claim  # the claim the registry objected to
    assert REGISTRY.get_sample_value("cds_auth_failures_total", {"reason": label}) == before + 1


def test_the_spec_example_jwt_is_rejected_as_expired() -> None:
    header = (
        (SPEC_EXAMPLES / "jwt-authorization-header-example.txt").read_text().strip().removeprefix("Authorization: ")
    )
    payload = load_example("jwt-payload-example.json")
    v = JwtVerifier(
        Settings(
            jwt_issuers={payload["iss"]: load_example("jwt-header-example.json")["jku"]},
            jwt_jwks={payload["iss"]: load_example("jwks-public-example.json")},
        ),
        httpx.AsyncClient(),
        ReplayCache(None),
    )
    with pytest.raises(AuthError, match="ExpiredToken"):
        verify(v, header, [payload["aud"]])


def test_a_jku_off_the_allow_list_is_rejected() -> None:
    token = "Bearer " + jwt.encode(
        {"alg": "ES384", "kid": "ec", "jku": "https://evil.example.org/jwks"}, claims(), EC, algorithms=["ES384"]
    )
    with pytest.raises(AuthError, match="jku"):
        verify(verifier(), token)


@pytest.fixture()
def clean_redis() -> Iterator[None]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield
    client.flushdb()


def test_in_process_replay_cache_rejects_the_second_use() -> None:
    v = verifier()
    token = sign(claims())
    verify(v, token)
    with pytest.raises(AuthError, match="replayed"):
        verify(v, token)


def test_redis_replay_cache_is_shared_between_replicas(clean_redis: None) -> None:
    token = sign(claims())
    verify(verifier(REDIS_URL), token)  # replica 1
    with pytest.raises(AuthError, match="replayed"):
        verify(verifier(REDIS_URL), token)  # replica 2 sees the same jti


def test_the_server_answers_a_bare_401(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = Settings(data_dir=tmp_path, public_url=base, jwt_jwks={ISS: JWKS}, deadline_ms=20_000)
    body = hook_request(
        "patient-view",
        "p1",
        {
            "patient": {"resourceType": "Patient", "id": "p1"},
            "conditions": {"resourceType": "Bundle", "type": "searchset"},
        },
    )
    good = sign(claims(aud=f"{base}/cds-services/diagnosis-suggestions"))
    with running_server(settings, port) as url:
        rejected = httpx.post(
            f"{url}/cds-services/diagnosis-suggestions", json=body, headers={"Authorization": sign(claims())}
        )
        accepted = httpx.post(
            f"{url}/cds-services/diagnosis-suggestions", json=body, headers={"Authorization": good}, timeout=60
        )
        ready = httpx.get(f"{url}/readyz").json()
    assert rejected.status_code == 401 and rejected.content == b""
    assert accepted.status_code == 200
    assert ready["auth"] == "jwt"


def test_a_token_for_the_hook_endpoint_is_refused_at_its_feedback_endpoint(tmp_path: Path) -> None:
    """Found by the campaign: the feedback endpoint accepted a token whose `aud` was the hook endpoint."""
    from fastapi.testclient import TestClient

    from cds_service.api.main import create_app

    base = "https://cds.example.org"
    settings = Settings(data_dir=tmp_path, public_url=base, jwt_jwks={ISS: JWKS})
    hook_aud = f"{base}/cds-services/diagnosis-suggestions"
    feedback = {"feedback": []}
    with TestClient(create_app(settings, backend=None)) as client:
        url = "/cds-services/diagnosis-suggestions/feedback"
        wrong = client.post(url, json=feedback, headers={"Authorization": sign(claims(aud=hook_aud))})
        right = client.post(url, json=feedback, headers={"Authorization": sign(claims(aud=f"{hook_aud}/feedback"))})
    assert wrong.status_code == 401
    assert right.status_code != 401


def test_a_client_chosen_alg_never_becomes_a_metric_series_or_a_forged_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by the campaign: 3,000 requests with 3,000 `alg` values made 3,000 Prometheus series, and a
    newline in `alg` forged a log line."""

    def unsigned_with_alg(alg: str) -> str:
        import base64
        import json

        def part(d: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

        return f"Bearer {part({'alg': alg, 'typ': 'JWT'})}.{part(claims())}.x"

    v = verifier()
    for alg in ("X1", "X2", "evil\nINFO cds_service: forged"):
        with pytest.raises(AuthError):
            verify(v, unsigned_with_alg(alg))
    labels = {s.labels["reason"] for m in REGISTRY.collect() if m.name == "cds_auth_failures" for s in m.samples}
    assert not any("X1" in label or "evil" in label for label in labels), labels
    assert "algorithm not accepted" in labels
    assert all("\n" not in r.getMessage() for r in caplog.records)


def test_bearer_is_case_insensitive_and_a_long_lived_token_is_refused() -> None:
    v = verifier(jwt_max_lifetime_s=600)
    assert verify(v, "bearer " + sign(claims()).removeprefix("Bearer "))["iss"] == ISS
    now = int(time.time())
    with pytest.raises(AuthError, match="lifetime"):
        verify(v, sign(claims(iat=now, exp=now + 86_400)))


def test_an_unknown_kid_refetches_the_jwks_once_then_waits() -> None:
    """Found by the campaign: a new key failed for up to 5 minutes (the JWKS cache) after an EHR rotated."""
    import respx

    url = "https://ehr.example.org/.well-known/jwks.json"
    new = ECKey.generate_key("P-384", parameters={"kid": "rotated"})
    served = {"keys": [EC.as_dict(private=False)]}

    async def run() -> tuple[int, bool, bool]:
        with respx.mock:
            route = respx.get(url).mock(side_effect=lambda request: httpx.Response(200, json=served))
            async with httpx.AsyncClient() as http:
                v = JwtVerifier(Settings(jwt_issuers={ISS: url}), http, ReplayCache(None))
                assert (await v.verify(sign(claims()), [AUD]))["iss"] == ISS  # first fetch
                served["keys"].append(new.as_dict(private=False))  # the EHR rotates in a new key
                rotated = await v.verify(sign(claims(), key=new), [AUD])  # unknown kid: refetched at once
                unknown = ECKey.generate_key("P-384", parameters={"kid": "nobody"})
                refused = False
                for _ in range(5):  # unknown kids do not make us refetch every time
                    try:
                        await v.verify(sign(claims(), key=unknown), [AUD])
                    except AuthError:
                        refused = True
                return route.call_count, rotated["iss"] == ISS, refused

    calls, rotated, refused = asyncio.run(run())
    assert rotated and refused
    assert calls == 2  # the first fetch and one refresh for the rotated kid; none for the five unknown ones


def test_a_verified_issuers_hooks_may_fetch_only_from_its_own_fhir_origins(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from cds_service.api.main import create_app
    from tests.servers import FakeFhirServer

    base = "https://cds.example.org"
    own, foreign = "https://fhir.ehr.example.org/r4", "https://fhir.other.example/r4"
    settings = Settings(
        data_dir=tmp_path,
        public_url=base,
        jwt_jwks={ISS: JWKS},
        fhir_origins_by_issuer={ISS: ["https://fhir.ehr.example.org"]},
    )
    fhir = FakeFhirServer(own)
    record = [{"resourceType": "Patient", "id": "p1"}, {"resourceType": "Condition", "id": "c1"}]
    aud = f"{base}/cds-services/diagnosis-suggestions"
    app = create_app(settings, backend=None, fhir_transport=fhir.transport())
    with TestClient(app) as client, fhir.serving(record) as calls:
        for server, expected in ((own, 200), (foreign, 412)):
            body = hook_request("patient-view", "p1", None, fhir_server=server, access_token="t")
            headers = {"Authorization": sign(claims(aud=aud))}
            response = client.post("/cds-services/diagnosis-suggestions", json=body, headers=headers)
            assert response.status_code == expected, response.text
    assert calls["Patient"] == 1  # only the issuer's own server was asked
    assert "may not be called" in response.json()["issue"][0]["diagnostics"]

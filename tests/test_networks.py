"""
Networks: proxies and private CAs, the same for both halves (issue 18, item 1).

The pure decision (:mod:`airflow_provider_banana.contract.network`) with plain dicts; then, over
real sockets on 127.0.0.1, a forward proxy (``tests/forward_proxy.py``) in front of a host name
only it knows, and an HTTPS front with a certificate of a private CA made at test time
(``tests/tls.py``), each through the sync hook, the async hook, the trigger, a deferrable task
(``dag.test()``) and a batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_banana.contract import (
    CHECK,
    START,
    BananaNetwork,
    BananaRetryPolicy,
    TransportFailure,
    bypasses_proxy,
    is_retryable,
    network_for,
    transport_error,
)
from airflow_provider_banana.devserver.testing import DevServer
from airflow_provider_banana.exceptions import (
    BananaCertificateError,
    BananaConfigError,
    BananaConnectError,
)
from airflow_provider_banana.hooks.banana import BananaAsyncHook, BananaHook
from airflow_provider_banana.triggers.banana import BananaCallTrigger
from tests.dags import banana_test_dags as scenarios
from tests.forward_proxy import INTERNAL_HOST, ForwardProxy
from tests.helpers import API_KEY, FAST, collect, connection_json, states, xcom
from tests.hostile import HostileServer, json_reply
from tests.tls import PrivateCA, TLSFront, make_ca

#: Every variable the network decision reads: cleared for each test, so the machine's own
#: settings (this one sets REQUESTS_CA_BUNDLE and SSL_CERT_FILE) decide nothing.
NETWORK_VARIABLES = [
    *(f"{scheme}_proxy" for scheme in ("http", "https", "all", "no")),
    *(f"{scheme}_PROXY" for scheme in ("HTTP", "HTTPS", "ALL", "NO")),
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
    "REQUEST_METHOD",
]
PASSWORD = "pr0xy-Secret-Pw"
ONE_TRY = BananaRetryPolicy(max_attempts=1)


def exists(path: str) -> bool:
    return path.startswith("/present")


def decide(url: str = "https://api.example/", extra: dict[str, Any] | None = None, **environ: str) -> BananaNetwork:
    return network_for(url, extra or {}, environ, exists=exists)


@pytest.fixture(autouse=True)
def clean_network_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NETWORK_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    return make_ca(tmp_path_factory.mktemp("private-ca"))


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as running:
        yield running


@pytest.fixture
def tls(ca: PrivateCA, server: DevServer) -> Iterator[TLSFront]:
    with TLSFront(ca, server.port) as front:
        yield front


def connect(monkeypatch: pytest.MonkeyPatch, url: str, **extra: Any) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_BANANA_DEFAULT", connection_json(url, model_key="wordcount", **extra))


def internal_url(server: DevServer) -> str:
    return f"http://{INTERNAL_HOST}:{server.port}/"


def sync_run(prompt: str = "hello proxy") -> list[Any]:
    with BananaHook(retry_policy=FAST) as hook:
        return hook.run({"prompt": prompt})


def async_run(prompt: str = "hello proxy") -> list[Any]:
    async def run() -> list[Any]:
        async with BananaAsyncHook(retry_policy=FAST) as hook:
            return await hook.run({"prompt": prompt})

    return asyncio.run(run())


def sync_start(policy: BananaRetryPolicy = FAST) -> Any:
    with BananaHook(retry_policy=policy) as hook:
        return hook.start({"prompt": "x"})


def async_start(policy: BananaRetryPolicy = FAST) -> Any:
    async def start() -> Any:
        async with BananaAsyncHook(retry_policy=policy) as hook:
            return await hook.start({"prompt": "x"})

    return asyncio.run(start())


HALVES = {"sync": sync_start, "async": async_start}


def run_trigger_on_a_fresh_call() -> dict[str, Any]:
    with BananaHook(retry_policy=FAST) as hook:
        call_id = hook.start({"seconds": 0.3, "result": "via trigger"}, "sleep", start_only=True).call_id
    assert call_id
    now = time.time()
    trigger = BananaCallTrigger(call_id, "banana_default", deadline=now + 30, started_at=now)
    events = asyncio.run(collect(trigger))
    assert len(events) == 1, events
    return events[0].payload


# --------------------------------------------------------------------------- the pure decision


class TestProxyDecision:
    def test_no_setting_means_direct_and_certifi(self) -> None:
        network = decide()
        assert (network.proxy, network.ca_bundle, network.verify) == (None, None, True)
        assert network.describe() == "directly, trusting certifi's CA bundle"

    @pytest.mark.parametrize(
        ("url", "environ", "expected", "source"),
        [
            ("https://api.example/", {"HTTPS_PROXY": "http://upper:1"}, "http://upper:1", "HTTPS_PROXY"),
            ("https://api.example/", {"https_proxy": "http://lower:1"}, "http://lower:1", "https_proxy"),
            (
                "https://api.example/",
                {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:1"},
                "http://lower:1",
                "https_proxy",
            ),
            ("http://api.example/", {"HTTP_PROXY": "http://plain:1"}, "http://plain:1", "HTTP_PROXY"),
            ("http://api.example/", {"http_proxy": "http://plain:1"}, "http://plain:1", "http_proxy"),
            ("https://api.example/", {"ALL_PROXY": "http://all:1"}, "http://all:1", "ALL_PROXY"),
            (
                "https://api.example/",
                {"all_proxy": "http://all:1", "HTTPS_PROXY": "http://s:1"},
                "http://s:1",
                "HTTPS_PROXY",
            ),
            ("https://api.example/", {"HTTPS_PROXY": "proxy.corp:3128"}, "http://proxy.corp:3128", "HTTPS_PROXY"),
            ("https://api.example/", {"HTTPS_PROXY": ""}, None, None),
        ],
    )
    def test_the_environment_proxy_for_the_url_scheme(
        self, url: str, environ: dict[str, str], expected: str | None, source: str | None
    ) -> None:
        network = decide(url, **environ)
        assert (network.proxy, network.proxy_source) == (expected, source)

    def test_an_https_url_ignores_http_proxy_and_an_http_url_ignores_https_proxy(self) -> None:
        assert decide("https://api.example/", HTTP_PROXY="http://p:1").proxy is None
        assert decide("http://api.example/", HTTPS_PROXY="http://p:1").proxy is None

    def test_under_cgi_the_upper_case_http_proxy_is_not_read(self) -> None:
        # httpoxy: a CGI request's "Proxy:" header arrives as HTTP_PROXY.
        assert decide("http://api.example/", HTTP_PROXY="http://evil:1", REQUEST_METHOD="GET").proxy is None

    @pytest.mark.parametrize(
        ("host", "port", "no_proxy", "bypassed"),
        [
            ("api.example", 443, "*", True),
            ("api.example", 443, "api.example", True),
            ("API.Example", 443, "api.example", True),
            ("eu.api.example", 443, "api.example", True),
            ("eu.api.example", 443, ".api.example", True),
            ("eu.api.example", 443, "*.api.example", True),
            ("api.example", 443, ".api.example", True),
            ("badapi.example", 443, "api.example", False),
            ("api.example", 443, "other.example, api.example", True),
            ("api.example", 443, "other.example api.example", True),
            ("api.example", 443, "api.example:8443", False),
            ("api.example", 8443, "api.example:8443", True),
            ("10.1.2.3", 443, "10.0.0.0/8", True),
            ("11.1.2.3", 443, "10.0.0.0/8", False),
            ("127.0.0.1", 8000, "127.0.0.1", True),
            ("127.0.0.1", 8000, "127.0.0.1:9000", False),
            ("::1", 443, "::1", True),
            ("::1", 8000, "[::1]:8000", True),
            ("127.0.0.1", 443, "localhost", False),
            ("api.example", 443, "", False),
        ],
    )
    def test_no_proxy(self, host: str, port: int, no_proxy: str, bypassed: bool) -> None:
        assert bypasses_proxy(host, port, no_proxy) is bypassed

    def test_no_proxy_applies_to_the_environment_proxy_lower_case_first(self) -> None:
        environ = {"HTTPS_PROXY": "http://p:1"}
        assert decide("https://api.example/", NO_PROXY="api.example", **environ).proxy is None
        assert decide("https://api.example/", no_proxy="api.example", **environ).proxy is None
        assert decide("https://api.example/", no_proxy="other", NO_PROXY="api.example", **environ).proxy

    def test_the_extra_overrides_the_environment_and_no_proxy(self) -> None:
        network = decide(extra={"proxy": "http://mine:3128"}, HTTPS_PROXY="http://env:1", NO_PROXY="*")
        assert (network.proxy, network.proxy_source) == ("http://mine:3128", "the connection extra 'proxy'")

    @pytest.mark.parametrize("off", [False, "false", "none"])
    def test_the_extra_false_turns_the_environment_proxy_off(self, off: Any) -> None:
        assert decide(extra={"proxy": off}, HTTPS_PROXY="http://env:1").proxy is None

    @pytest.mark.parametrize("unset", [None, ""])
    def test_an_empty_extra_leaves_the_environment_in_charge(self, unset: Any) -> None:
        assert decide(extra={"proxy": unset}, HTTPS_PROXY="http://env:1").proxy == "http://env:1"

    @pytest.mark.parametrize(
        ("extra", "environ", "named"),
        [
            ({"proxy": 3128}, {}, "'proxy'"),
            ({"proxy": ["http://p:1"]}, {}, "'proxy'"),
            ({"proxy": f"socks5://u:{PASSWORD}@p:1"}, {}, "'proxy'"),
            ({"proxy": f"http://u:{PASSWORD}@p:notaport"}, {}, "'proxy'"),
            ({}, {"HTTPS_PROXY": f"socks5h://u:{PASSWORD}@p:1"}, "HTTPS_PROXY"),
            ({}, {"all_proxy": "ftp://p:1"}, "all_proxy"),
        ],
    )
    def test_an_unusable_proxy_is_refused_naming_its_source_never_its_password(
        self, extra: dict[str, Any], environ: dict[str, str], named: str
    ) -> None:
        with pytest.raises(BananaConfigError) as caught:
            decide(extra=extra, **environ)
        assert named in str(caught.value)
        assert PASSWORD not in str(caught.value)


class TestTrustDecision:
    @pytest.mark.parametrize(
        ("environ", "expected", "source"),
        [
            ({"SSL_CERT_FILE": "/present/ssl"}, "/present/ssl", "SSL_CERT_FILE"),
            ({"REQUESTS_CA_BUNDLE": "/present/req", "SSL_CERT_FILE": "/present/ssl"}, "/present/req", "REQUESTS"),
            ({"CURL_CA_BUNDLE": "/present/curl", "SSL_CERT_FILE": "/present/ssl"}, "/present/curl", "CURL"),
        ],
    )
    def test_the_environment_bundle(self, environ: dict[str, str], expected: str, source: str) -> None:
        network = decide(**environ)
        assert network.ca_bundle == expected
        assert source in network.ca_source

    def test_the_extra_bundle_wins(self) -> None:
        network = decide(extra={"ca_bundle": "/present/mine"}, REQUESTS_CA_BUNDLE="/present/env")
        assert (network.ca_bundle, network.ca_source) == ("/present/mine", "the connection extra 'ca_bundle'")
        assert network.requests_verify == "/present/mine"

    @pytest.mark.parametrize(
        ("extra", "environ", "named"),
        [
            ({"ca_bundle": "/absent/ca.pem"}, {}, "'ca_bundle'"),
            ({"ca_bundle": 42}, {}, "'ca_bundle'"),
            ({}, {"REQUESTS_CA_BUNDLE": "/absent/ca.pem"}, "REQUESTS_CA_BUNDLE"),
            ({}, {"SSL_CERT_FILE": "/absent/ca.pem"}, "SSL_CERT_FILE"),
        ],
    )
    def test_a_missing_bundle_is_refused_naming_its_source(
        self, extra: dict[str, Any], environ: dict[str, str], named: str
    ) -> None:
        with pytest.raises(BananaConfigError, match=named):
            decide(extra=extra, **environ)

    @pytest.mark.parametrize(("value", "verify"), [(True, True), (False, False), ("false", False), ("True", True)])
    def test_verify(self, value: Any, verify: bool) -> None:
        network = decide(extra={"verify": value})
        assert network.verify is verify
        assert (network.requests_verify is False) is not verify

    @pytest.mark.parametrize("value", ["nope", 0, 1, "", [], {"x": 1}])
    def test_verify_takes_a_boolean_only(self, value: Any) -> None:
        with pytest.raises(BananaConfigError, match="'verify'"):
            decide(extra={"verify": value})


class TestCredentialsNeverShown:
    def network(self) -> BananaNetwork:
        return decide(HTTPS_PROXY=f"http://alice:{PASSWORD}@proxy.corp:3128")

    def test_every_text_of_the_decision_masks_them(self) -> None:
        network = self.network()
        assert network.proxy == f"http://alice:{PASSWORD}@proxy.corp:3128"
        assert network.proxy_shown == "http://***@proxy.corp:3128"
        assert network.proxy_url == "http://proxy.corp:3128"
        for text in (repr(network), network.describe(), network.proxy_shown or ""):
            assert PASSWORD not in text
            assert "alice" not in text

    def test_the_proxy_authorization_header(self) -> None:
        assert self.network().proxy_authorization == "Basic YWxpY2U6cHIweHktU2VjcmV0LVB3"
        encoded = decide(HTTPS_PROXY="http://a%40b:p%3Aw@proxy.corp:1").proxy_authorization
        assert encoded == "Basic " + __import__("base64").b64encode(b"a@b:p:w").decode()

    def test_scrub_masks_the_library_words(self) -> None:
        network = self.network()
        text = network.scrub(f"failed: http://alice:{PASSWORD}@proxy.corp:3128 said {PASSWORD}")
        assert PASSWORD not in text
        assert "***" in text

    def test_a_transport_error_names_the_proxy_without_them(self) -> None:
        network = self.network()
        error = transport_error(
            TransportFailure.PROXY, endpoint=START, detail=f"refused by alice:{PASSWORD}@proxy", network=network
        )
        assert isinstance(error, BananaConnectError)
        assert not error.request_sent
        assert "could not connect through the proxy http://***@proxy.corp:3128 (from HTTPS_PROXY)" in str(error)
        assert PASSWORD not in str(error)


class TestCertificateRule:
    def test_an_untrusted_certificate_is_a_connect_error_that_is_not_retried(self) -> None:
        error = transport_error(
            TransportFailure.UNTRUSTED_CERTIFICATE,
            endpoint=START,
            detail="certificate verify failed: unable to get local issuer certificate",
            network=decide(SSL_CERT_FILE="/present/ssl"),
        )
        assert isinstance(error, BananaCertificateError)
        assert not error.request_sent
        assert "certificate verify failed: unable to get local issuer certificate" in str(error)
        assert "the CA bundle /present/ssl (the environment variable SSL_CERT_FILE)" in str(error)
        assert "'ca_bundle'" in str(error)
        assert not is_retryable(error, START)
        assert not is_retryable(error, CHECK)

    def test_other_connect_errors_still_are(self) -> None:
        error = transport_error(TransportFailure.PROXY, endpoint=START)
        assert is_retryable(error, START)


# --------------------------------------------------------------------------- through a forward proxy


class TestThroughAProxy:
    @pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy"])
    def test_both_hooks_reach_a_name_only_the_proxy_knows(
        self, variable: str, server: DevServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        connect(monkeypatch, internal_url(server))
        monkeypatch.setenv(variable, proxy.url)
        assert sync_run("one two")[0]["words"] == 2
        assert async_run("one two three")[0]["words"] == 3
        assert proxy.count("/start/v4") == 2
        assert server.stats()["starts_taken"] == 2

    def test_the_trigger(self, server: DevServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch) -> None:
        connect(monkeypatch, internal_url(server))
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        payload = run_trigger_on_a_fresh_call()
        assert payload["status"] == "success", payload
        assert payload["model_outputs"] == [{"slept": 0.3, "result": "via trigger"}]
        assert proxy.count("/check/v4") >= 1

    def test_the_extra_proxy_without_any_environment(
        self, server: DevServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        connect(monkeypatch, internal_url(server), proxy=proxy.url)
        assert sync_run()[0]["words"] == 2
        assert async_run()[0]["words"] == 2
        assert proxy.count("/start/v4") == 2

    def test_no_proxy_sends_it_direct(self, server: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
        with ForwardProxy({"127.0.0.1": "127.0.0.1"}) as proxy:
            connect(monkeypatch, server.url)
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            sync_run()
            assert proxy.count() == 1  # without NO_PROXY: through the proxy
            monkeypatch.setenv("no_proxy", "localhost, 127.0.0.0/8")
            sync_run()
            async_run()
            assert proxy.count() == 1  # with it: direct, both halves
        assert server.stats()["starts_taken"] == 3

    def test_the_extra_false_goes_direct_past_a_dead_environment_proxy(
        self, server: DevServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")
        connect(monkeypatch, server.url, proxy=False)
        assert sync_run()[0]["words"] == 2
        assert async_run()[0]["words"] == 2

    def test_proxy_credentials_are_sent_and_never_shown(
        self, server: DevServer, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
    ) -> None:
        with ForwardProxy(credentials=("alice", PASSWORD)) as proxy:
            connect(monkeypatch, internal_url(server))
            monkeypatch.setenv("HTTP_PROXY", proxy.url_with("alice", PASSWORD))
            sync_run()
            async_run()
            assert (proxy.count("/start/v4"), proxy.refused) == (2, 0)
            ok, message = BananaHook(retry_policy=FAST).test_connection()
            assert ok, message
            assert "http://***@127.0.0.1" in message
        logs = "".join(capfd.readouterr())
        assert PASSWORD not in message + logs

    @pytest.mark.parametrize("half", HALVES)
    def test_a_proxy_that_wants_other_credentials_is_one_clear_error(
        self,
        half: str,
        ca: PrivateCA,
        tls: TLSFront,
        server: DevServer,
        monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str],
    ) -> None:
        # HTTPS through the proxy: the tunnel is refused with 407, before anything reaches the server.
        with ForwardProxy(credentials=("alice", "the-right-one")) as proxy:
            connect(monkeypatch, tls.url(INTERNAL_HOST), ca_bundle=str(ca.ca_path))
            monkeypatch.setenv("HTTPS_PROXY", proxy.url_with("alice", PASSWORD))
            with pytest.raises(BananaConnectError) as caught:
                HALVES[half](ONE_TRY)
            assert proxy.refused == 1
        text = str(caught.value)
        assert f"could not connect through the proxy http://***@127.0.0.1:{proxy.port} (from HTTPS_PROXY)" in text
        assert PASSWORD not in text + "".join(capfd.readouterr())
        assert server.stats()["start_requests"] == 0

    @pytest.mark.parametrize("half", HALVES)
    def test_a_proxy_that_refuses_connections_is_named(
        self, half: str, server: DevServer, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
    ) -> None:
        connect(monkeypatch, internal_url(server))
        monkeypatch.setenv("HTTP_PROXY", f"http://alice:{PASSWORD}@127.0.0.1:1")
        with pytest.raises(BananaConnectError) as caught:
            HALVES[half](ONE_TRY)
        assert "could not connect through the proxy http://***@127.0.0.1:1 (from HTTP_PROXY)" in str(caught.value)
        assert not caught.value.request_sent
        assert PASSWORD not in str(caught.value) + repr(caught.value) + "".join(capfd.readouterr())

    def test_a_bad_proxy_fails_before_any_request(self, server: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
        connect(monkeypatch, server.url)
        monkeypatch.setenv("HTTP_PROXY", f"socks5://alice:{PASSWORD}@127.0.0.1:1080")
        ok, message = BananaHook().test_connection()
        assert not ok
        assert "HTTP_PROXY" in message
        assert PASSWORD not in message
        assert server.stats()["start_requests"] + server.stats()["check_requests"] == 0


# --------------------------------------------------------------------------- behind a private CA


class TestPrivateCA:
    def test_the_ca_bundle_extra_serves_both_hooks_and_the_trigger(
        self, ca: PrivateCA, tls: TLSFront, server: DevServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        connect(monkeypatch, tls.url(), ca_bundle=str(ca.ca_path))
        assert sync_run("a b")[0]["words"] == 2
        assert async_run("a b c")[0]["words"] == 3
        assert run_trigger_on_a_fresh_call()["model_outputs"] == [{"slept": 0.3, "result": "via trigger"}]
        assert server.stats()["starts_taken"] == 3
        assert tls.failed_handshakes == 0

    @pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
    def test_the_environment_bundle_serves_both_hooks(
        self, variable: str, ca: PrivateCA, tls: TLSFront, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        connect(monkeypatch, tls.url())
        monkeypatch.setenv(variable, str(ca.ca_path))
        assert sync_run()[0]["words"] == 2
        assert async_run()[0]["words"] == 2
        ok, message = BananaHook(retry_policy=FAST).test_connection()
        assert ok, message
        assert f"the environment variable {variable}" in message

    def test_https_through_the_proxy_with_the_private_ca(
        self, ca: PrivateCA, tls: TLSFront, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        connect(monkeypatch, tls.url(INTERNAL_HOST), ca_bundle=str(ca.ca_path))
        monkeypatch.setenv("https_proxy", proxy.url)
        assert sync_run()[0]["words"] == 2
        assert async_run()[0]["words"] == 2
        assert proxy.count(f"CONNECT {INTERNAL_HOST}:{tls.port}") >= 2

    @pytest.mark.parametrize("half", HALVES)
    def test_an_untrusted_certificate_is_one_clear_error_after_one_attempt(
        self, half: str, tls: TLSFront, server: DevServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        connect(monkeypatch, tls.url())
        with pytest.raises(BananaCertificateError) as caught:
            HALVES[half]()  # FAST allows 4 attempts: a retry would show as another connection
        text = str(caught.value)
        assert "certificate verify failed: unable to get local issuer certificate" in text
        for hint in ("'ca_bundle'", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
            assert hint in text
        assert not caught.value.request_sent
        assert tls.connections == 1
        assert server.stats()["start_requests"] == 0
        assert API_KEY not in text

    @pytest.mark.parametrize("half", HALVES)
    def test_a_certificate_for_another_name_is_named(
        self, half: str, ca: PrivateCA, tls: TLSFront, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with ForwardProxy({"elsewhere.internal.test": "127.0.0.1"}) as proxy:
            connect(monkeypatch, tls.url("elsewhere.internal.test"), ca_bundle=str(ca.ca_path))
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
            with pytest.raises(BananaCertificateError, match="certificate verify failed: Hostname mismatch"):
                HALVES[half]()
        assert tls.connections == 1

    def test_verify_false_connects_and_warns_in_every_hook(
        self, tls: TLSFront, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
    ) -> None:
        connect(monkeypatch, tls.url(), verify=False)
        capfd.readouterr()
        assert sync_run()[0]["words"] == 2
        assert async_run()[0]["words"] == 2
        logs = "".join(capfd.readouterr())
        assert logs.count("TLS certificate verification is OFF for Banana connection banana_default") == 2

    def test_a_missing_ca_bundle_fails_before_any_request(
        self, tmp_path: Path, server: DevServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        connect(monkeypatch, server.url, ca_bundle=str(tmp_path / "absent.pem"))
        with pytest.raises(BananaConfigError, match="'ca_bundle'"):
            sync_start()
        with pytest.raises(BananaConfigError, match="'ca_bundle'"):
            async_start()
        (tmp_path / "empty.pem").write_text("not a certificate\n")
        connect(monkeypatch, server.url, ca_bundle=str(tmp_path / "empty.pem"))
        with pytest.raises(BananaConfigError, match="holds no usable certificate"):
            sync_start()
        assert server.stats()["start_requests"] == 0


# --------------------------------------------------------------------------- test_connection, both halves


class TestConnectionTest:
    def test_it_names_the_worker_half_when_that_fails(self, tls: TLSFront, monkeypatch: pytest.MonkeyPatch) -> None:
        connect(monkeypatch, tls.url())
        ok, message = BananaHook(retry_policy=FAST).test_connection()
        assert not ok
        assert message.startswith("The worker's half (requests) failed")
        assert "certificate verify failed" in message

    def test_it_names_the_triggerer_half_when_only_that_fails(self, monkeypatch: pytest.MonkeyPatch) -> None:
        replies = [
            json_reply({"message": "taskID does not exist"}),
            json_reply({"message": "error: apiKey refused from this client"}),
        ]
        with HostileServer(replies) as hostile:
            connect(monkeypatch, hostile.url)
            ok, message = BananaHook(retry_policy=ONE_TRY).test_connection()
            assert hostile.count("/check") == 2
        assert not ok
        assert message.startswith("The triggerer's half (aiohttp) failed")
        assert "apiKey refused from this client" in message

    def test_it_says_both_halves_connected(self, server: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
        connect(monkeypatch, server.url)
        ok, message = BananaHook(retry_policy=FAST).test_connection()
        assert ok, message
        assert "from both the worker's half (requests) and the triggerer's half (aiohttp)" in message
        assert server.stats()["check_requests"] == 2
        assert server.stats()["starts_taken"] == 0

    def test_it_runs_from_inside_a_running_event_loop(self, server: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
        # asyncio.run cannot nest: the triggerer's half then runs in a thread with a loop of its own.
        connect(monkeypatch, server.url)

        async def inside() -> tuple[bool, str]:
            return BananaHook(retry_policy=FAST).test_connection()

        ok, message = asyncio.run(inside())
        assert ok, message
        assert server.stats()["check_requests"] == 2


# --------------------------------------------------------------------------- tasks, with dag.test()


@pytest.mark.usefixtures("airflow_db")
class TestTasks:
    def through_proxy(self, server: DevServer, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch) -> None:
        connect(monkeypatch, internal_url(server))
        monkeypatch.setenv("HTTP_PROXY", proxy.url)

    def behind_private_ca(self, ca: PrivateCA, tls: TLSFront, monkeypatch: pytest.MonkeyPatch) -> None:
        connect(monkeypatch, tls.url(), ca_bundle=str(ca.ca_path))

    @pytest.mark.parametrize("network", ["proxy", "private CA"])
    def test_a_deferrable_task_pays_one_start(
        self,
        network: str,
        ca: PrivateCA,
        tls: TLSFront,
        proxy: ForwardProxy,
        server: DevServer,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        if network == "proxy":
            self.through_proxy(server, proxy, monkeypatch)
        else:
            self.behind_private_ca(ca, tls, monkeypatch)
        run = scenarios.deferrable_success.test()
        assert str(run.state) == "success", states(run)
        assert xcom(run, "downstream")[0]["upper"] == "T_DEFERRABLE_SUCCESS OK"
        stats = server.stats()
        assert stats["starts_taken"] == 1
        assert stats["check_requests"] >= 1  # the trigger's half reached it too
        if network == "proxy":
            assert proxy.count("/start/v4") == 1
            assert proxy.count("/check/v4") >= 1
        else:
            assert tls.failed_handshakes == 0

    @pytest.mark.parametrize("network", ["proxy", "private CA"])
    def test_a_batch_that_defers(
        self,
        network: str,
        ca: PrivateCA,
        tls: TLSFront,
        proxy: ForwardProxy,
        server: DevServer,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        if network == "proxy":
            self.through_proxy(server, proxy, monkeypatch)
        else:
            self.behind_private_ca(ca, tls, monkeypatch)
        run = scenarios.batch_long_calls_defer.test()
        assert str(run.state) == "success", states(run)
        assert [item[0]["result"] for item in xcom(run, "downstream")] == list(range(6))
        assert server.stats()["starts_taken"] == 6
        if network == "proxy":
            assert proxy.count("/start/v4") == 6

"""The Redis store over TLS (``rediss://``): the Redis wire (:mod:`agentstream.handlers.stores.
redis_wire`) honours the URL's TLS options as redis-py reads them (``ssl_ca_certs``,
``ssl_cert_reqs``, ``ssl_check_hostname``, ``ssl_certfile``, ``ssl_keyfile``), and verifies the
server's certificate: a certificate of an unknown CA is refused.

A throwaway CA and certificates, made with the ``openssl`` CLI, and a ``redis-server`` that
listens with TLS only (``--port 0 --tls-port``).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from agentstream.handlers.stores.base import Put
from agentstream.handlers.stores.redis_store import RedisStore
from agentstream.handlers.stores.redis_wire import RedisWire
from agentstream.schemas.errors import RetryableError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from tests.services import RedisServer, ServiceError, unavailable
from tests.services.redis import RedisTls

pytestmark = pytest.mark.redis


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    unknown_ca: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=30
    )


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key, cwd=directory)
    _openssl(
        "req", "-x509", "-new", "-key", key, "-subj", f"/CN={name}", "-days", "2",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", cert, cwd=directory,
    )  # fmt: skip
    return cert, key


def _leaf(directory: Path, name: str, ca: tuple[Path, Path], san: str) -> tuple[Path, Path]:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    extensions = directory / f"{name}.ext"
    extensions.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key, cwd=directory)
    _openssl("req", "-new", "-key", key, "-subj", f"/CN={name}", "-out", csr, cwd=directory)
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-days", "2", "-extfile", extensions, "-out", cert, cwd=directory,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        unavailable("no openssl CLI to make the test certificates")
    directory = tmp_path_factory.mktemp("redis-tls")
    ca = _ca(directory, "test-ca")
    unknown_ca, _ = _ca(directory, "unknown-ca")
    # An IP address only: ``localhost`` does not match, for the host name check.
    server = _leaf(directory, "server", ca, "IP:127.0.0.1")
    client = _leaf(directory, "client", ca, "DNS:agentstream-worker")
    return Pki(ca[0], server[0], server[1], client[0], client[1], unknown_ca)


def _server(pki: Pki, *, auth_clients: bool) -> Iterator[RedisServer]:
    tls = RedisTls(pki.server_cert, pki.server_key, pki.ca, auth_clients=auth_clients)
    try:
        server = RedisServer(tls=tls)
    except ServiceError as exc:
        unavailable(f"no Redis: {exc}")
    try:
        server.start()
    except ServiceError as exc:
        server.close()
        unavailable(f"redis-server did not start with TLS (built without it?): {exc}")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def tls_redis(pki: Pki) -> Iterator[RedisServer]:
    """A Redis that listens with TLS only, no client certificate asked."""
    yield from _server(pki, auth_clients=False)


@pytest.fixture(scope="module")
def mtls_redis(pki: Pki) -> Iterator[RedisServer]:
    """A Redis that asks clients for a certificate of the test CA."""
    yield from _server(pki, auth_clients=True)


def _url(server: RedisServer, host: str = "127.0.0.1", **options: str | Path) -> str:
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in options.items())
    url = f"rediss://{host}:{server.port}/0"
    return f"{url}?{query}" if query else url


async def _round_trip(store: RedisStore, prefix: str) -> None:
    """Commands on the wire (put, fetch, the commit script) and on redis-py's pool (append)."""
    await store.put(f"{prefix}k", b"over tls", ttl_s=60)
    assert await store.fetch(f"{prefix}k") == b"over tls"
    assert await store.commit(expect={}, ops=[Put(f"{prefix}state", b"s1", ttl_s=60)])
    assert (await store.get(f"{prefix}state")).value == b"s1"
    assert await store.append(f"{prefix}list", b"a", ttl_s=60) == 1
    await store.ping()


async def test_the_store_works_over_tls_with_the_urls_ca(
    tls_redis: RedisServer, pki: Pki, prefix: str
) -> None:
    store = RedisStore(_url(tls_redis, ssl_ca_certs=pki.ca, ssl_cert_reqs="required"))
    try:
        assert store._wire is not None  # the pipelined wire, not redis-py's fallback
        await _round_trip(store, prefix)
    finally:
        await store.close()


async def test_an_unknown_ca_is_refused(tls_redis: RedisServer, pki: Pki, prefix: str) -> None:
    store = RedisStore(
        _url(tls_redis, ssl_ca_certs=pki.unknown_ca, ssl_cert_reqs="required"),
        socket_timeout_s=2.0,
    )
    try:
        with pytest.raises(RetryableError, match="CERTIFICATE_VERIFY_FAILED"):
            await store.fetch(f"{prefix}k")  # the wire
        with pytest.raises(RetryableError, match="CERTIFICATE_VERIFY_FAILED"):
            await store.ping()  # redis-py's pool, for the same URL
    finally:
        await store.close()


async def test_no_ca_in_the_url_verifies_against_the_system_cas(
    tls_redis: RedisServer, prefix: str
) -> None:
    # redis-py's default for rediss:// is ssl_cert_reqs=required: the test CA is unknown.
    wire = RedisWire(_url(tls_redis), timeout_s=2.0)
    try:
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await wire.send([("GET", f"{prefix}k")])
    finally:
        await wire.aclose()


async def test_cert_reqs_none_skips_verification(tls_redis: RedisServer, pki: Pki) -> None:
    wire = RedisWire(_url(tls_redis, ssl_cert_reqs="none"), timeout_s=2.0)
    try:
        assert await wire.send([("PING",)]) == [b"PONG"]
    finally:
        await wire.aclose()


async def test_the_host_name_is_checked_unless_the_url_says_not(
    tls_redis: RedisServer, pki: Pki
) -> None:
    # The server's certificate names 127.0.0.1 only.
    checked = RedisWire(_url(tls_redis, "localhost", ssl_ca_certs=pki.ca), timeout_s=2.0)
    unchecked = RedisWire(
        _url(tls_redis, "localhost", ssl_ca_certs=pki.ca, ssl_check_hostname="false"),
        timeout_s=2.0,
    )
    try:
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await checked.send([("PING",)])
        assert await unchecked.send([("PING",)]) == [b"PONG"]
    finally:
        await checked.aclose()
        await unchecked.aclose()


async def test_a_client_certificate_from_the_url(
    mtls_redis: RedisServer, pki: Pki, prefix: str
) -> None:
    without = RedisWire(_url(mtls_redis, ssl_ca_certs=pki.ca), timeout_s=2.0)
    store = RedisStore(
        _url(
            mtls_redis,
            ssl_ca_certs=pki.ca,
            ssl_certfile=pki.client_cert,
            ssl_keyfile=pki.client_key,
        )
    )
    try:
        with pytest.raises(RedisConnectionError):
            await without.send([("PING",)])
        await _round_trip(store, prefix)
    finally:
        await without.aclose()
        await store.close()


def test_a_bad_tls_option_fails_at_construction() -> None:
    with pytest.raises(RedisError, match="Certificate Requirements"):
        RedisWire("rediss://127.0.0.1:1/0?ssl_cert_reqs=maybe")
    with pytest.raises(ValueError, match="TLS option"):
        RedisWire("rediss://127.0.0.1:1/0?ssl_no_such_option=1")


def test_errors_name_the_url_without_its_passwords() -> None:
    store = RedisStore("rediss://me:secret1@127.0.0.1:1/0?ssl_ca_certs=/ca.pem&password=secret2")
    safe = store._safe_url()
    assert "secret" not in safe
    assert safe == "rediss://***@127.0.0.1:1/0?ssl_ca_certs=/ca.pem&password=***"

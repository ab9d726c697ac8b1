"""Kafka security: SASL/SCRAM credentials and ACLs on a real broker; TLS settings.

One private broker started with ``--scram`` (``infra/kafka/start.sh``) serves the module: a
SASL_PLAINTEXT SCRAM-SHA-512 listener with the StandardAuthorizer and no ACLs at first,
users ``admin`` (super user), ``alice`` and ``bob``. ACLs are added with Kafka's own
``kafka-acls`` tool (``org.apache.kafka.tools.AclCommand``), logged in as ``admin`` through
the SASL listener with a client properties file; aiokafka has no CreateAcls.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentstream.schemas.errors import ConfigError
from agentstream.topics import Consumer, KafkaConfig, OutgoingRecord, Record, TopicDescription
from agentstream.topics.kafka import KafkaBus
from pydantic import SecretStr

from tests.cli_runner import run_cli
from tests.services import KAFKA_DIR, KafkaBroker, ServiceError, unavailable

MECHANISM = "SCRAM-SHA-512"


@pytest.fixture(scope="module")
def scram_broker() -> Iterator[KafkaBroker]:
    broker = KafkaBroker(scram=True)
    try:
        broker.start()
    except ServiceError as exc:
        broker.close()
        unavailable(f"cannot start a SCRAM Kafka broker with infra/kafka/start.sh: {exc}")
    try:
        yield broker
    finally:
        broker.close()


def _config(broker: KafkaBroker, user: str, password: str) -> KafkaConfig:
    return KafkaConfig(
        bootstrap_servers=broker.sasl_bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=MECHANISM,
        sasl_username=user,
        sasl_password=SecretStr(password),
        request_timeout_ms=10_000,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=500,
    )


def _unique(name: str) -> str:
    return f"sec-{name}-{uuid.uuid4().hex[:8]}"


async def _consume_one(bus: KafkaBus, group: str, topic: str) -> Record:
    consumer = bus.consumer(group, [topic])
    await consumer.start()
    try:
        for _ in range(150):
            records = await consumer.getmany(timeout_ms=200)
            if records:
                await consumer.commit({records[0].tp: records[0].offset + 1})
                assert await consumer.committed(records[0].tp) == records[0].offset + 1
                return records[0]
        raise AssertionError(f"nothing read from {topic} as group {group}")
    finally:
        await consumer.stop()


async def _poll(consumer: Consumer, times: int) -> None:
    for _ in range(times):
        await consumer.getmany(timeout_ms=100)


def _kafka_acls(broker: KafkaBroker, tmp_path: Path, *args: str) -> str:
    """Run Kafka's ``kafka-acls`` as ``admin`` over the SASL listener; return its stdout."""
    fetched = subprocess.run(
        ["bash", str(KAFKA_DIR / "fetch.sh")], capture_output=True, text=True, check=True
    )
    libs = fetched.stdout.strip().splitlines()[-1]
    properties = tmp_path / "admin.properties"
    properties.write_text(
        "security.protocol=SASL_PLAINTEXT\n"
        f"sasl.mechanism={MECHANISM}\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="admin" password="admin-secret";\n'
    )
    result = subprocess.run(
        [
            "java",
            "-Xmx128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            "org.apache.kafka.tools.AclCommand",
            "--bootstrap-server",
            broker.sasl_bootstrap,
            "--command-config",
            str(properties),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _cli(argv: list[str]) -> tuple[int, str, str]:
    return run_cli(argv)


# -- SASL/SCRAM on a real broker ------------------------------------------------------------------


@pytest.mark.kafka
async def test_right_credentials_create_publish_and_consume(scram_broker: KafkaBroker) -> None:
    topic, group = _unique("admin"), _unique("admin-group")
    bus = KafkaBus(_config(scram_broker, "admin", "admin-secret"))
    await bus.start()
    try:
        assert await bus.create_topics([TopicDescription(topic, 2, 1)]) == [topic]
        meta = await bus.publish(OutgoingRecord(topic, b"hello", b"conv-1"))
        record = await _consume_one(bus, group, topic)
    finally:
        await bus.stop()
    assert (record.partition, record.offset, record.value) == (meta.partition, 0, b"hello")


@pytest.mark.kafka
@pytest.mark.parametrize(("user", "password"), [("admin", "wrong"), ("nobody", "secret")])
async def test_wrong_credentials_fail_with_a_clear_message(
    scram_broker: KafkaBroker, user: str, password: str
) -> None:
    bus = KafkaBus(_config(scram_broker, user, password))
    with pytest.raises(ConfigError) as caught:
        await bus.start()
    assert str(caught.value) == (
        f"Kafka authentication failed for user {user!r} (SCRAM-SHA-512): "
        "check AGENTSTREAM_KAFKA__SASL_USERNAME/PASSWORD"
    )
    assert not caught.value.retriable
    assert password not in str(caught.value)
    # Nothing left half-open: a failed start may be followed by stop().
    await bus.stop()


@pytest.mark.kafka
def test_wrong_password_on_the_command_line_is_one_readable_line(
    scram_broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", scram_broker.sasl_bootstrap)
    monkeypatch.setenv("AGENTSTREAM_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("AGENTSTREAM_KAFKA__SASL_MECHANISM", MECHANISM)
    monkeypatch.setenv("AGENTSTREAM_KAFKA__SASL_USERNAME", "alice")
    monkeypatch.setenv("AGENTSTREAM_KAFKA__SASL_PASSWORD", "not-alices-password")
    code, out, err = _cli(["status"])
    assert code == 1
    assert out == ""
    assert "error: Kafka authentication failed for user 'alice' (SCRAM-SHA-512)" in err
    assert "Traceback" not in err
    assert "not-alices-password" not in err


@pytest.mark.kafka
async def test_a_user_without_acls_is_not_authorized(scram_broker: KafkaBroker) -> None:
    topic = _unique("bob")
    admin = KafkaBus(_config(scram_broker, "admin", "admin-secret"))
    await admin.start()
    try:
        await admin.create_topics([TopicDescription(topic, 1, 1)])
    finally:
        await admin.stop()

    bob = KafkaBus(_config(scram_broker, "bob", "bob-secret"))
    # The idempotent producer needs WRITE on some topic: bob has none.
    with pytest.raises(ConfigError, match=r"Kafka user 'bob' is not authorized to produce"):
        await bob.start()
    await bob.stop()

    await bob.start(produce=False)  # admin client only: connecting needs no ACL
    try:
        with pytest.raises(
            ConfigError, match=rf"Kafka user 'bob' is not authorized to describe topic '{topic}'"
        ):
            await bob.describe_topics([topic])
        with pytest.raises(ConfigError, match="not authorized"):
            await bob.publish(OutgoingRecord(topic, b"x"))
    finally:
        await bob.stop()


@pytest.mark.kafka
async def test_a_user_with_acls_publishes_and_consumes_its_topic_only(
    scram_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic, group, other = _unique("alice"), _unique("alice-group"), _unique("not-alice")
    admin = KafkaBus(_config(scram_broker, "admin", "admin-secret"))
    await admin.start()
    try:
        await admin.create_topics([TopicDescription(topic, 2, 1), TopicDescription(other, 1, 1)])
    finally:
        await admin.stop()
    added = await asyncio.to_thread(
        _kafka_acls,
        scram_broker,
        tmp_path,
        "--add",
        "--allow-principal",
        "User:alice",
        "--producer",
        "--consumer",
        "--topic",
        topic,
        "--group",
        group,
    )
    assert "operation=WRITE" in added
    assert "operation=READ" in added

    alice = KafkaBus(_config(scram_broker, "alice", "alice-secret"))
    # The broker applies new ACLs from its metadata log a moment after they are created.
    for attempt in range(50):
        try:
            await alice.start()
            break
        except ConfigError:
            await alice.stop()
            if attempt == 49:
                raise
            await asyncio.sleep(0.2)
    try:
        meta = await alice.publish(OutgoingRecord(topic, b"from alice", b"conv-a"))
        record = await _consume_one(alice, group, topic)
        assert (record.partition, record.value) == (meta.partition, b"from alice")

        with pytest.raises(ConfigError, match=rf"'alice' is not authorized to describe .*{other}"):
            await alice.publish(OutgoingRecord(other, b"x"))
        not_hers = alice.consumer(_unique("foreign-group"), [topic])
        await not_hers.start()
        try:
            with pytest.raises(ConfigError, match=r"'alice' is not authorized to read as group"):
                await _poll(not_hers, 100)
        finally:
            await not_hers.stop()
    finally:
        await alice.stop()


# -- TLS settings ---------------------------------------------------------------------------------


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a client certificate signed by it: (ca, cert, key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl is not installed")
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "client.key", directory / "client.csr", directory / "client.pem"

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        "/CN=agentstream-test-ca", "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=agentstream-client",
        "-keyout", str(key), "-out", str(csr))  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "1", "-out", str(cert))  # fmt: skip
    return ca, cert, key


def test_sasl_ssl_builds_a_verifying_ssl_context(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    config = KafkaConfig(
        bootstrap_servers="kafka.example:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc-agent",
        sasl_password=SecretStr("tls-pa55word"),
        ssl_cafile=str(ca),
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    options = config.client_options()
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is True
    subjects = [dict(item[0] for item in c["subject"]) for c in context.get_ca_certs()]
    assert {"commonName": "agentstream-test-ca"} in subjects
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "svc-agent"
    assert options["sasl_plain_password"] == "tls-pa55word"  # only what aiokafka is handed


def test_ssl_without_sasl_and_without_hostname_check(tmp_path: Path) -> None:
    ca, _, _ = _certificates(tmp_path)
    config = KafkaConfig(security_protocol="SSL", ssl_cafile=str(ca), ssl_check_hostname=False)
    options = config.client_options()
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname is False
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert "sasl_mechanism" not in options
    assert "ssl_context" not in KafkaConfig(security_protocol="SASL_PLAINTEXT").client_options()


def test_the_password_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "never-print-me-42"
    config = KafkaConfig(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password=SecretStr(secret),
    )
    for shown in (repr(config), str(config), config.model_dump_json(), str(config.model_dump())):
        assert secret not in shown
    assert "**********" in config.model_dump_json()

    from agentstream.settings import Settings

    monkeypatch.setenv("AGENTSTREAM_KAFKA__SASL_PASSWORD", secret)
    monkeypatch.setenv("AGENTSTREAM_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    settings = Settings()
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == secret
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert secret not in shown

"""TLS: to RabbitMQ (RABBITMQ_TLS with a CA, a client certificate and key) and to
PostgreSQL (sslmode and friends in POSTGRES_DSN).

RabbitMQ: the test makes a CA, a server and a client certificate with the openssl
command, and asks the running broker (`rabbitmqctl eval`) to open an extra TLS
listener on a free port with them, requiring a client certificate; the listener is
stopped afterwards. Nothing else about the broker changes. The worker then imports
through that listener, verifying the broker against the CA.

PostgreSQL: the server here may run with `ssl = off`. The test then shows that
`sslmode=require` reaches libpq (the worker stops with libpq's clear reason), and
runs a real verified TLS import through a small TLS-terminating proxy that answers
PostgreSQL's SSLRequest in front of the server (the server itself does not serve TLS
then). Where the server has `ssl = on`, the test also connects to it directly.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import psycopg.conninfo
import pytest

from conftest import Harness, free_port, msg
from dbimport.broker import Broker
from dbimport.config import Settings, load_settings
from dbimport.errors import ConfigError, ServiceUnavailable
from dbimport.store import Store
from dbimport.worker import RunLimits, Worker
from faults.services import rabbitmqctl

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


# --- certificates --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, all
    signed by the CA, and a second, unrelated CA."""

    folder: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=folder)


def _signed(folder: Path, name: str, cn: str, extensions: str) -> None:
    (folder / f"{name}.ext").write_text(extensions)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=folder)


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    # The broker runs as its own user: the files must be readable outside pytest's
    # private temporary folder.
    folder = Path(tempfile.mkdtemp(prefix="dbimport-tls-"))
    folder.chmod(0o755)
    try:
        _ca(folder, "ca")
        _ca(folder, "other-ca")
        _signed(folder, "server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
        _signed(folder, "client", "dbimport-worker", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
        for path in folder.iterdir():
            path.chmod(0o644)
        # libpq refuses a client key that others can read.
        (folder / "client.key").chmod(0o600)
        yield Pki(folder, folder / "ca.pem", folder / "server.pem", folder / "server.key",
                  folder / "client.pem", folder / "client.key", folder / "other-ca.pem")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def wait_for_port(port: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


# --- RabbitMQ ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def amqps_port(pki: Pki) -> Iterator[int]:
    """An extra TLS listener on the running broker, requiring a client certificate
    signed by the test CA; stopped afterwards. The plain listener is untouched."""
    port = free_port()
    options = (
        f'[{{cacertfile, "{pki.ca}"}}, {{certfile, "{pki.server_cert}"}}, {{keyfile, "{pki.server_key}"}}, '
        f"{{verify, verify_peer}}, {{fail_if_no_peer_cert, true}}]"
    )
    out = rabbitmqctl("eval", f'rabbit_networking:start_ssl_listener({{"127.0.0.1", {port}}}, {options}, 1).')
    assert out.strip() == "ok", out
    try:
        wait_for_port(port)
        yield port
    finally:
        rabbitmqctl("eval", f'rabbit_networking:stop_tcp_listener({{"127.0.0.1", {port}}}).')


def tls_settings(harness: Harness, pki: Pki, port: int, tmp_path: Path, **changes: str) -> Settings:
    """The test's settings with the TLS keys read from a main.json, as an operator writes them."""
    keys = {
        "RABBITMQ_HOST": "localhost", "RABBITMQ_PORT": str(port), "RABBITMQ_TLS": "true",
        "RABBITMQ_TLS_CA": str(pki.ca), "RABBITMQ_TLS_CERT": str(pki.client_cert),
        "RABBITMQ_TLS_KEY": str(pki.client_key), **changes,
    }
    config = tmp_path / "main.json"
    config.write_text(json.dumps(keys))
    ours = {f.name: getattr(harness.settings, f.name) for f in dataclasses.fields(Settings)
            if f.metadata["key"] not in keys}
    ours["connect_timeout_s"] = 2.0  # a refused connection gives up at start quickly
    return load_settings(config, environ={}, **ours)


def test_a_real_import_runs_over_tls_to_the_broker(harness: Harness, pki: Pki, amqps_port: int, tmp_path: Path) -> None:
    """Given RABBITMQ_TLS, RABBITMQ_TLS_CA, RABBITMQ_TLS_CERT and RABBITMQ_TLS_KEY in
    main.json and the broker's TLS listener, when the worker runs, then it verifies the
    broker against the CA, presents its client certificate, and imports the messages
    (published by the test over plain AMQP to the same queues)."""
    settings = tls_settings(harness, pki, amqps_port, tmp_path)
    assert settings.rabbitmq_tls and settings.rabbitmq_tls_ca == str(pki.ca)
    harness.publish(msg(email="tls@example.com", feedback_id="over-tls", data={"_fname": "Tls"}))
    stats = Worker(settings).run(RunLimits(until_empty=True))
    assert stats.handled == 1
    [result] = harness.results()
    assert (result["error"], result["feedback_id"]) == (0, "over-tls"), result
    assert harness.rows("SELECT fields->>'_fname' FROM profiles WHERE email = 'tls@example.com'") == [("Tls",)]


def test_the_broker_sees_a_tls_connection_with_the_workers_certificate(
    harness: Harness, pki: Pki, amqps_port: int, tmp_path: Path,
) -> None:
    """While the worker's broker connection is open, RabbitMQ lists it as TLS, with the
    client certificate's subject: the traffic is encrypted, not merely on another port."""
    broker = Broker(tls_settings(harness, pki, amqps_port, tmp_path))
    broker.connect()
    try:
        listing = rabbitmqctl("list_connections", "--quiet", "--no-table-headers", "ssl", "ssl_protocol",
                              "peer_cert_subject", "client_properties")
    finally:
        broker.close()
    ours = [line for line in listing.splitlines() if f"pid={os.getpid()} queue={harness.settings.import_queue}" in line]
    assert len(ours) == 1, listing
    assert ours[0].split("\t")[0] == "true", ours[0]
    assert "tlsv1." in ours[0] and "CN=dbimport-worker" in ours[0], ours[0]


def test_a_broker_certificate_from_another_ca_is_refused(
    harness: Harness, pki: Pki, amqps_port: int, tmp_path: Path,
) -> None:
    """Given RABBITMQ_TLS_CA naming a CA that did not sign the broker's certificate, the
    worker refuses the connection (certificate verify failed), gives up at start, and
    consumes nothing."""
    harness.publish(msg(email="never@example.com", feedback_id="never"))
    settings = tls_settings(harness, pki, amqps_port, tmp_path, RABBITMQ_TLS_CA=str(pki.other_ca))
    with pytest.raises(ServiceUnavailable) as refused:
        Worker(settings).run(RunLimits(until_empty=True))
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value) or "certificate verify failed" in str(refused.value)
    assert harness.queue_depth(harness.settings.import_queue) == 1
    assert harness.count("SELECT count(*) FROM profiles") == 0


def test_the_tls_listener_takes_no_plain_amqp_and_no_client_without_a_certificate(
    harness: Harness, pki: Pki, amqps_port: int, tmp_path: Path,
) -> None:
    """The port the import went through speaks only TLS (plain AMQP fails), and it
    requires a client certificate: without RABBITMQ_TLS_CERT/KEY the connection fails."""
    plain = tls_settings(harness, pki, amqps_port, tmp_path, RABBITMQ_TLS="false")
    anonymous = tls_settings(harness, pki, amqps_port, tmp_path, RABBITMQ_TLS_CERT="", RABBITMQ_TLS_KEY="")
    for settings in (plain, anonymous):
        with pytest.raises(ServiceUnavailable):
            Worker(settings).run(RunLimits(until_empty=True))


def test_a_tls_file_that_cannot_be_read_is_a_configuration_error(tmp_path: Path, pki: Pki) -> None:
    """Given RABBITMQ_TLS on with a CA, certificate or key file that does not exist, the
    settings are refused at start naming the key (exit 78), instead of the worker
    retrying the connection as if RabbitMQ were down."""
    missing = str(tmp_path / "missing.pem")
    base = {"RABBITMQ_TLS": "true", "RABBITMQ_TLS_CA": str(pki.ca), "RABBITMQ_TLS_CERT": str(pki.client_cert),
            "RABBITMQ_TLS_KEY": str(pki.client_key)}
    for key in ("RABBITMQ_TLS_CA", "RABBITMQ_TLS_CERT", "RABBITMQ_TLS_KEY"):
        with pytest.raises(ConfigError) as refused:
            load_settings(None, environ={**base, key: missing})
        assert key in str(refused.value)


# --- PostgreSQL -------------------------------------------------------------------------------


def server_ssl(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW ssl").fetchone()
    assert row is not None
    return str(row[0])


def with_params(dsn: str, **params: str | int) -> str:
    return psycopg.conninfo.make_conninfo(dsn, **params)


def test_sslmode_in_the_dsn_reaches_postgresql(harness: Harness) -> None:
    """Given POSTGRES_DSN with sslmode=require: on a server with ssl on, the worker's
    connection is encrypted and the import works; on one with ssl off (as here), the
    worker refuses to fall back to plain text and stops with libpq's reason."""
    dsn = with_params(harness.settings.postgres_dsn, sslmode="require")
    settings = harness.settings.replace(postgres_dsn=dsn, connect_timeout_s=1.0)
    if server_ssl(harness.settings.postgres_dsn) == "on":
        store = Store(dsn)
        try:
            with store.transaction() as conn:
                assert conn.pgconn.ssl_in_use
        finally:
            store.close()
        harness.publish(msg(email="pg-tls@example.com"))
        harness.run(settings=settings)
        [result] = harness.results()
        assert result["error"] == 0, result
        return
    with pytest.raises(ServiceUnavailable) as refused:
        Worker(settings).run(RunLimits(until_empty=True))
    assert "server does not support SSL, but SSL was required" in str(refused.value)


class PostgresTlsProxy:
    """Answers PostgreSQL's SSLRequest, terminates TLS with `context`, and forwards the
    decrypted protocol to the real server. A client that starts in plain text is cut off."""

    def __init__(self, context: ssl.SSLContext, upstream: tuple[str, int]) -> None:
        self.context = context
        self.upstream = upstream
        self.port = free_port()
        self.tls_sessions = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.base_events.Server | None = None

    def __enter__(self) -> PostgresTlsProxy:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port), self.loop)
        self.server = started.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                _length, code = struct.unpack("!ii", await reader.readexactly(8))
                if code == GSSENC_REQUEST:
                    writer.write(b"N")
                    await writer.drain()
                    continue
                if code != SSL_REQUEST:
                    writer.close()
                    return
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self.context)
                self.tls_sessions += 1
                break
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()


@pytest.fixture
def pg_tls_proxy(pki: Pki, harness: Harness) -> Iterator[PostgresTlsProxy]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    context.verify_mode = ssl.CERT_REQUIRED  # the worker must present its certificate too
    params = psycopg.conninfo.conninfo_to_dict(harness.settings.postgres_dsn)
    upstream = (str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
    with PostgresTlsProxy(context, upstream) as proxy:
        yield proxy


def proxied_dsn(harness: Harness, proxy: PostgresTlsProxy, root_ca: Path, pki: Pki) -> str:
    return with_params(
        harness.settings.postgres_dsn, host="localhost", hostaddr="127.0.0.1", port=proxy.port,
        sslmode="verify-full", sslrootcert=str(root_ca), sslcert=str(pki.client_cert), sslkey=str(pki.client_key),
        gssencmode="disable",
    )


def test_a_real_import_runs_over_verified_tls_to_postgresql(
    harness: Harness, pki: Pki, pg_tls_proxy: PostgresTlsProxy,
) -> None:
    """Given POSTGRES_DSN with sslmode=verify-full, sslrootcert, sslcert and sslkey, and
    a TLS endpoint for the store, then the worker's connection is encrypted and
    verified (host name and CA), and a real import goes through it."""
    dsn = proxied_dsn(harness, pg_tls_proxy, pki.ca, pki)
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
    sessions = pg_tls_proxy.tls_sessions
    harness.publish(msg(email="pg-tls@example.com", feedback_id="pg-tls", data={"_fname": "Encrypted"}))
    stats = harness.run(settings=harness.settings.replace(postgres_dsn=dsn))
    assert stats.handled == 1
    [result] = harness.results()
    assert (result["error"], result["feedback_id"]) == (0, "pg-tls"), result
    assert pg_tls_proxy.tls_sessions > sessions, "the worker did not connect through TLS"
    assert harness.rows("SELECT fields->>'_fname' FROM profiles WHERE email = 'pg-tls@example.com'") == [("Encrypted",)]


def test_a_postgresql_certificate_from_another_ca_is_refused(
    harness: Harness, pki: Pki, pg_tls_proxy: PostgresTlsProxy,
) -> None:
    """Given sslrootcert naming a CA that did not sign the server's certificate, the
    worker refuses the connection and stops at start with libpq's reason."""
    dsn = proxied_dsn(harness, pg_tls_proxy, pki.other_ca, pki)
    harness.publish(msg(email="never@example.com"))
    with pytest.raises(ServiceUnavailable) as refused:
        Worker(harness.settings.replace(postgres_dsn=dsn, connect_timeout_s=1.0)).run(RunLimits(until_empty=True))
    assert "certificate verify failed" in str(refused.value), str(refused.value)
    assert harness.queue_depth(harness.settings.import_queue) == 1

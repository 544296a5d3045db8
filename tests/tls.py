"""
A private certificate authority made at test time, and an HTTPS front for the local Banana server.

:func:`make_ca` writes a CA certificate and a server certificate it signed (``cryptography``, which
Airflow installs) into a directory; :class:`TLSFront` listens on 127.0.0.1 with that server
certificate and relays each connection, once its TLS handshake is done, to a plain-HTTP server
(the devserver): so the devserver is reached over HTTPS, as a server behind a private CA is.

It counts the connections it accepted and the handshakes that failed (a client that does not
trust the certificate aborts its handshake), and stops by itself after ``lifetime`` seconds.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import select
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class PrivateCA:
    """
    Files of a private CA and of one server certificate it signed.

    :param ca_path: the CA's certificate (PEM): what a client must trust.
    :param cert_path: the server's certificate chain (PEM).
    :param key_path: the server's private key (PEM).
    """

    ca_path: Path
    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        """Return a server-side context presenting the server certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


def make_ca(directory: Path, names: tuple[str, ...] = ("banana.internal.test", "localhost")) -> PrivateCA:
    """
    Make a CA and a server certificate for ``names`` and 127.0.0.1, valid for a day; write their files.

    :param directory: where the PEM files go.
    :param names: the server certificate's DNS names.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Banana test private CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alternative_names: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    alternative_names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "ca.pem"
    cert_path = directory / "server.pem"
    key_path = directory / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return PrivateCA(ca_path=ca_path, cert_path=cert_path, key_path=key_path)


class TLSFront:
    """
    HTTPS on 127.0.0.1 (a free port) in front of a plain-HTTP server on 127.0.0.1; a context manager.

    :param ca: the certificate to present.
    :param upstream_port: the plain-HTTP server's port on 127.0.0.1.
    :param lifetime: seconds after which it stops by itself.
    """

    def __init__(self, ca: PrivateCA, upstream_port: int, *, lifetime: float = 120.0) -> None:
        self._context = ca.server_context()
        self._upstream_port = upstream_port
        #: TCP connections accepted (each a client's attempt to connect).
        self.connections = 0
        #: TLS handshakes that failed (the client did not trust the certificate, say).
        self.failed_handshakes = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="tls-front", daemon=True)
        self._timer = threading.Timer(lifetime, self.close)
        self._timer.daemon = True

    def url(self, host: str = "localhost") -> str:
        """Return the base URL by ``host`` (``localhost``, ``127.0.0.1`` or the proxy-only name)."""
        return f"https://{host}:{self.port}/"

    def __enter__(self) -> TLSFront:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting and end every relay."""
        self._stopped.set()
        self._timer.cancel()
        with contextlib.suppress(OSError):
            self._listener.close()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            client = self._context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            with self._lock:
                self.failed_handshakes += 1
            raw.close()
            return
        with contextlib.closing(client):
            try:
                upstream = socket.create_connection(("127.0.0.1", self._upstream_port), timeout=10)
            except OSError:
                return
            with contextlib.closing(upstream):
                client.setblocking(False)
                self._relay(client, upstream)

    def _relay(self, client: ssl.SSLSocket, upstream: socket.socket) -> None:
        while not self._stopped.is_set():
            # An SSL socket may hold decrypted bytes that select cannot see: drain those first.
            readable = [client] if client.pending() else select.select([client, upstream], [], [], 0.2)[0]
            for source in readable:
                try:
                    data = source.recv(65536)
                except (ssl.SSLWantReadError, BlockingIOError):
                    continue
                except OSError:
                    return
                if not data:
                    return
                try:
                    if source is client:
                        upstream.sendall(data)
                    else:
                        _send_all(client, data)
                except OSError:
                    return


def _send_all(sock: ssl.SSLSocket, data: bytes) -> None:
    # A non-blocking SSL socket may take part of the bytes, or none until it can write.
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            select.select([], [sock], [], 0.2)
            continue
        view = view[sent:]

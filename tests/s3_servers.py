"""Real S3 servers for tests, on loopback: moto's threaded server over HTTP, and moto's app over HTTPS (a self-signed
certificate for 127.0.0.1) that records the headers of every request, for what moto accepts but does not act on
(SSE-C: moto stores the object as it is and ignores the customer key headers)."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

ACCESS = "clipsync-fleet-access"
SECRET = "fleet-s3cr3t-Do-Not-Leak"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def moto_http() -> Iterator[str]:
    """moto's ThreadedMotoServer on a free loopback port; yields ``http://127.0.0.1:<port>``."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "s3.crt", folder / "s3.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@contextlib.contextmanager
def moto_https(folder: Path) -> Iterator[tuple[str, Path, list[tuple[str, str, dict[str, str]]]]]:
    """moto's S3 app over HTTPS on a free loopback port, recording (method, path, headers) of every request.

    Yields:
        ``https://127.0.0.1:<port>``, the certificate to trust (``SSL_CERT_FILE``), the request record.
    """
    import ssl

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    cert, key = _self_signed(folder)
    moto_app = DomainDispatcherApplication(create_backend_app)
    seen: list[tuple[str, str, dict[str, str]]] = []

    def app(environ, start_response):
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        seen.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), headers))
        return moto_app(environ, start_response)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}", cert, seen
    finally:
        server.shutdown()
        thread.join(timeout=5)

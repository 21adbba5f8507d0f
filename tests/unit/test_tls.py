"""Upstream TLS contexts (tlsproxy.tls): what each setting does to the `ssl.SSLContext`, checked on the
context and, where it matters, by a real TLS handshake between two `SSLObject`s over memory BIOs
(no sockets, no server). Failures are produced for real and fed to `describe_tls_failure`."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from tests.support.pki import TestPki
from tlsproxy.config import ConfigError, Route, SslMode, TcpAddress, TlsSettings
from tlsproxy.demo.pki import CertificateAuthority
from tlsproxy.errors import CertificateVerifyError, UpstreamTlsError
from tlsproxy.tls import UpstreamTls, build_client_context, build_upstream_tls, describe_tls_failure

TEST_CA_SUBJECT = ((("commonName", "tlsproxy test CA"),),)


# ---- an in-memory handshake ------------------------------------------------------------------------


def server_context(cert: Path, key: Path, *, client_ca: Path | None = None, **settings: Any) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(client_ca))
    for name, value in settings.items():
        if name == "ciphers":
            context.set_ciphers(value)
        else:
            setattr(context, name, value)
    return context


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, server_hostname: str | None = "localhost") -> ssl.SSLObject:
    """Run a TLS handshake between `client` and `server` in memory. Returns the client's SSLObject, or
    raises the client's exception (the server's alert reaches the client first)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    client_done = server_done = False
    server_error: ssl.SSLError | None = None
    for _ in range(50):
        if not client_done:
            try:
                tls_client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not server_done and server_error is None:
            try:
                tls_server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as error:  # its alert is in s_out: the client fails on it next round
                server_error = error
        c_in.write(s_out.read())
        if client_done and server_done:
            return tls_client
        if client_done and server_error is not None:
            raise server_error  # TLS 1.3: the client finishes before the server has checked it
    raise AssertionError(f"handshake did not finish (server error: {server_error!r})")


def upstream(settings: TlsSettings, host: str = "localhost") -> UpstreamTls:
    tls = build_upstream_tls(Route("t", TcpAddress("127.0.0.1", 0), TcpAddress(host, 3306), tls=settings))
    assert tls is not None
    return tls


def connect(settings: TlsSettings, cert: Path, key: Path, host: str = "localhost", **server: Any) -> ssl.SSLObject:
    tls = upstream(settings, host)
    return handshake(tls.context, server_context(cert, key, **server), tls.server_hostname)


def verify_failure(settings: TlsSettings, cert: Path, key: Path,
                   host: str = "localhost") -> tuple[ssl.SSLCertVerificationError, UpstreamTls]:
    tls = upstream(settings, host)
    with pytest.raises(ssl.SSLCertVerificationError) as failure:
        handshake(tls.context, server_context(cert, key), tls.server_hostname)
    return failure.value, tls


@pytest.fixture(scope="module")
def extra(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Certificates the session PKI does not have: from a CA of our own (the session CA's key is not kept)."""
    directory = tmp_path_factory.mktemp("tls-extra")
    ca = CertificateAuthority.create("unit CA", key_type="ec256")
    ca.write(directory / "ca.pem")
    now = datetime.now(UTC)
    ca.issue_server(("localhost",), ("127.0.0.1",), key_type="ec256", not_before=now + timedelta(days=2),
                    not_after=now + timedelta(days=30)).write(directory / "future.pem", directory / "future.key")
    ca.issue_server(("localhost",), ("127.0.0.1",), key_type="ec256").write(directory / "ec.pem", directory / "ec.key")
    self_signed = CertificateAuthority.create("localhost", key_type="ec256")
    directory.joinpath("self-signed.pem").write_bytes(self_signed.cert_pem)
    directory.joinpath("self-signed.key").write_bytes(self_signed.key_pem)
    directory.joinpath("bundle.pem").write_bytes(pki.other_ca.read_bytes() + pki.ca.read_bytes())
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    directory.joinpath("test-ca-p7b.pem").write_bytes(pkcs7.serialize_certificates([ca_cert], Encoding.PEM))
    directory.joinpath("test-ca.der").write_bytes(ca_cert.public_bytes(Encoding.DER))
    return {
        "unit-ca": directory / "ca.pem",
        "future": directory / "future.pem",
        "self-signed": directory / "self-signed.pem",
        "bundle": directory / "bundle.pem",
        "p7b-pem": directory / "test-ca-p7b.pem",
        "der": directory / "test-ca.der",
    }


# ---- modes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "verify_mode", "check_hostname"), [
    (SslMode.VERIFY_IDENTITY, ssl.CERT_REQUIRED, True),
    (SslMode.VERIFY_CA, ssl.CERT_REQUIRED, False),
    (SslMode.REQUIRED, ssl.CERT_NONE, False),
])
def test_mode_sets_verification(pki: TestPki, mode: SslMode, verify_mode: ssl.VerifyMode, check_hostname: bool) -> None:
    context = build_client_context(TlsSettings(mode=mode, ca_file=pki.ca))
    assert context.verify_mode == verify_mode
    assert context.check_hostname is check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.maximum_version == ssl.TLSVersion.TLSv1_3


def test_disabled_builds_no_tls_and_opens_no_file(tmp_path: Path) -> None:
    settings = TlsSettings(mode=SslMode.DISABLED, ca_file=tmp_path / "missing.pem")
    route = Route("t", TcpAddress("127.0.0.1", 0), TcpAddress("db", 3306), tls=settings)
    assert build_upstream_tls(route) is None


def test_required_does_not_load_a_ca(tmp_path: Path) -> None:
    """REQUIRED verifies nothing, so a missing CA file does not matter (and is not read)."""
    context = build_client_context(TlsSettings(mode=SslMode.REQUIRED, ca_file=tmp_path / "missing.pem"))
    assert context.get_ca_certs() == []


def test_upstream_names(pki: TestPki) -> None:
    default = upstream(TlsSettings(ca_file=pki.ca), host="db.example.com")
    assert (default.server_hostname, default.expected_name, default.mode) == ("db.example.com", "db.example.com",
                                                                             SslMode.VERIFY_IDENTITY)
    override = upstream(TlsSettings(ca_file=pki.ca, server_name="db.internal"), host="10.0.0.5")
    assert (override.server_hostname, override.expected_name) == ("db.internal", "db.internal")


def test_verify_identity_accepts_the_right_server(pki: TestPki) -> None:
    assert connect(TlsSettings(ca_file=pki.ca), pki.server_cert, pki.server_key).version() == "TLSv1.3"


def test_verify_identity_checks_ip_addresses(pki: TestPki) -> None:
    connect(TlsSettings(ca_file=pki.ca), pki.server_cert, pki.server_key, host="127.0.0.1")
    connect(TlsSettings(ca_file=pki.ca), pki.server_cert, pki.server_key, host="::1")


def test_verify_ca_ignores_the_host_name_but_not_the_chain(pki: TestPki) -> None:
    connect(TlsSettings(mode=SslMode.VERIFY_CA, ca_file=pki.ca), pki.wrong_host_cert, pki.wrong_host_key)
    error, _ = verify_failure(TlsSettings(mode=SslMode.VERIFY_CA, ca_file=pki.ca), pki.other_server_cert, pki.other_server_key)
    assert error.verify_code == 20


def test_required_accepts_any_certificate(pki: TestPki) -> None:
    tls = connect(TlsSettings(mode=SslMode.REQUIRED, ca_file=pki.ca), pki.other_server_cert, pki.other_server_key)
    assert tls.version() == "TLSv1.3"


def test_server_name_override_is_what_gets_verified(pki: TestPki) -> None:
    connect(TlsSettings(ca_file=pki.ca, server_name="db.example.test"), pki.wrong_host_cert, pki.wrong_host_key,
            host="127.0.0.1")


# ---- versions --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("versions", "minimum", "maximum"), [
    (("TLSv1.2",), ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2),
    (("TLSv1.3",), ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3),
    (("TLSv1.2", "TLSv1.3"), ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3),
])
def test_tls_version_sets_minimum_and_maximum(pki: TestPki, versions: tuple[str, ...], minimum: ssl.TLSVersion,
                                              maximum: ssl.TLSVersion) -> None:
    settings = TlsSettings(ca_file=pki.ca, tls_versions=versions)
    context = build_client_context(settings)
    assert (context.minimum_version, context.maximum_version) == (minimum, maximum)
    assert connect(settings, pki.server_cert, pki.server_key).version() == versions[-1]


def test_without_the_legacy_switch_the_security_level_stays(pki: TestPki) -> None:
    assert build_client_context(TlsSettings(ca_file=pki.ca)).security_level >= 1
    # allow_legacy_tls alone, with modern versions, changes nothing.
    assert build_client_context(TlsSettings(ca_file=pki.ca, allow_legacy_tls=True)).security_level >= 1


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_legacy_switch_lowers_the_security_level_and_allows_tlsv1(pki: TestPki) -> None:
    settings = TlsSettings(ca_file=pki.ca, tls_versions=("TLSv1", "TLSv1.1", "TLSv1.2"), allow_legacy_tls=True)
    context = build_client_context(settings)
    assert context.minimum_version == ssl.TLSVersion.TLSv1
    assert context.maximum_version == ssl.TLSVersion.TLSv1_2
    assert context.security_level == 0  # "@SECLEVEL=0" was appended to the cipher list
    # ... so an old server that only speaks TLSv1.1 can really be reached.
    old_server = dict(minimum_version=ssl.TLSVersion.TLSv1_1, maximum_version=ssl.TLSVersion.TLSv1_1,
                      ciphers="DEFAULT:@SECLEVEL=0")
    assert connect(settings, pki.server_cert, pki.server_key, **old_server).version() == "TLSv1.1"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_legacy_switch_keeps_the_cipher_list(pki: TestPki) -> None:
    settings = TlsSettings(ca_file=pki.ca, tls_versions=("TLSv1.1", "TLSv1.2"), allow_legacy_tls=True,
                           cipher="ECDHE-RSA-AES128-SHA")
    context = build_client_context(settings)
    assert context.security_level == 0
    assert {c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"} == {"ECDHE-RSA-AES128-SHA"}


# ---- ciphers ---------------------------------------------------------------------------------------


def _names(context: ssl.SSLContext, tls13: bool) -> set[str]:
    return {c["name"] for c in context.get_ciphers() if (c["protocol"] == "TLSv1.3") is tls13}


def test_ssl_cipher_sets_the_tls12_list(pki: TestPki) -> None:
    settings = TlsSettings(ca_file=pki.ca, tls_versions=("TLSv1.2",), cipher="ECDHE-RSA-AES128-GCM-SHA256")
    context = build_client_context(settings)
    assert _names(context, tls13=False) == {"ECDHE-RSA-AES128-GCM-SHA256"}
    assert connect(settings, pki.server_cert, pki.server_key).cipher()[0] == "ECDHE-RSA-AES128-GCM-SHA256"


@pytest.mark.parametrize("cipher", ["NOT-A-CIPHER", "TLS_AES_128_GCM_SHA256", "eNULL:!eNULL"])
def test_bad_ssl_cipher_is_a_config_error(pki: TestPki, cipher: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_client_context(TlsSettings(ca_file=pki.ca, cipher=cipher), "routes[2].")
    assert error.value.key == "routes[2].ssl_cipher"
    assert f"OpenSSL accepts no cipher in {cipher!r}" in error.value.problem


def test_default_tls13_suites(pki: TestPki) -> None:
    assert _names(build_client_context(TlsSettings(ca_file=pki.ca)), tls13=True) == {
        "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"}


@pytest.mark.parametrize("suites", ["TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"])
def test_tls_ciphersuites_restricts_the_tls13_suites(pki: TestPki, suites: str) -> None:
    settings = TlsSettings(ca_file=pki.ca, ciphersuites=suites)
    context = build_client_context(settings)
    assert _names(context, tls13=True) == set(suites.split(":"))
    assert _names(context, tls13=False)  # the TLS 1.2 list is untouched


def test_tls_ciphersuites_negotiates_the_chosen_suite(pki: TestPki) -> None:
    # OpenSSL's own preference would be TLS_AES_256_GCM_SHA384.
    settings = TlsSettings(ca_file=pki.ca, ciphersuites="TLS_AES_128_GCM_SHA256")
    assert connect(settings, pki.server_cert, pki.server_key).cipher()[0] == "TLS_AES_128_GCM_SHA256"


@pytest.mark.parametrize("suites", ["TLS_BOGUS", "ECDHE-RSA-AES128-GCM-SHA256"])
def test_bad_tls_ciphersuites_is_a_config_error(pki: TestPki, suites: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_client_context(TlsSettings(ca_file=pki.ca, ciphersuites=suites), "routes[0].")
    assert error.value.key == "routes[0].tls_ciphersuites"
    assert f"OpenSSL accepts no TLS 1.3 suite in {suites!r}" in error.value.problem


def test_a_misspelt_suite_in_a_list_is_a_config_error(pki: TestPki) -> None:
    with pytest.raises(ConfigError) as error:
        build_client_context(TlsSettings(ca_file=pki.ca, ciphersuites="TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA385"),
                             "routes[0].")
    assert error.value.key == "routes[0].tls_ciphersuites"
    assert "TLS_AES_256_GCM_SHA385" in error.value.problem


# ---- trust anchors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["pem", "p7b-der", "p7b-pem", "der", "bundle"])
def test_ca_file_forms(pki: TestPki, extra: dict[str, Path], form: str) -> None:
    path = {"pem": pki.ca, "p7b-der": pki.ca_p7b_der, "p7b-pem": extra["p7b-pem"], "der": extra["der"],
            "bundle": extra["bundle"]}[form]
    settings = TlsSettings(ca_file=path)
    subjects = [ca["subject"] for ca in build_client_context(settings).get_ca_certs()]
    assert TEST_CA_SUBJECT in subjects
    assert len(subjects) == (2 if form == "bundle" else 1)  # and not the system store
    connect(settings, pki.server_cert, pki.server_key)


def test_ca_file_p7b_der_is_really_der(pki: TestPki) -> None:
    assert not pki.ca_p7b_der.read_bytes().startswith(b"-----")


@pytest.mark.parametrize(("content", "fragment"), [
    (None, "cannot read the file"),
    (b"", "the file is empty"),
    (b"not a certificate at all", "not a certificate file"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "no CERTIFICATE or PKCS7 PEM block found"),
])
def test_bad_ca_file_is_a_config_error(tmp_path: Path, content: bytes | None, fragment: str) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        build_client_context(TlsSettings(ca_file=path), "routes[1].")
    assert error.value.key == "routes[1].ssl_ca"
    assert str(path) in error.value.problem and fragment in error.value.problem


@pytest.mark.parametrize("kind", ["file", "missing"])
def test_capath_must_be_a_directory(pki: TestPki, tmp_path: Path, kind: str) -> None:
    path = pki.ca if kind == "file" else tmp_path / "nowhere"
    with pytest.raises(ConfigError) as error:
        build_client_context(TlsSettings(ca_path=path), "routes[0].")
    assert error.value.key == "routes[0].ssl_capath"
    assert f"{path} {'is not a directory' if kind == 'file' else 'does not exist'}" in error.value.problem


@pytest.mark.parametrize("content", ["empty", "unhashed"])
def test_capath_without_hashed_names_is_refused(pki: TestPki, tmp_path: Path, content: str) -> None:
    """OpenSSL would load such a directory without complaint and then verify nothing against it."""
    directory = tmp_path / "capath"
    directory.mkdir()
    if content == "unhashed":
        shutil.copy(pki.ca, directory / "ca.pem")
    with pytest.raises(ConfigError) as error:
        build_client_context(TlsSettings(ca_path=directory), "routes[0].")
    assert error.value.key == "routes[0].ssl_capath"
    assert f"openssl rehash {directory}" in error.value.problem


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to hash the directory")
def test_capath_hashed_directory(pki: TestPki, tmp_path: Path) -> None:
    directory = tmp_path / "capath"
    directory.mkdir()
    subject_hash = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(pki.ca)], check=True,
                                  capture_output=True, text=True).stdout.strip()
    shutil.copy(pki.ca, directory / f"{subject_hash}.0")
    settings = TlsSettings(ca_path=directory)
    assert not settings.uses_system_trust
    connect(settings, pki.server_cert, pki.server_key)
    error, _ = verify_failure(settings, pki.other_server_cert, pki.other_server_key)
    assert error.verify_code == 20


@pytest.fixture
def system_store(pki: TestPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make OpenSSL's default verify paths hold exactly the test CA."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    empty = tmp_path / "empty-capath"
    empty.mkdir()
    monkeypatch.setenv("SSL_CERT_DIR", str(empty))


def test_system_trust_is_used_when_no_ca_is_given(pki: TestPki, system_store: None) -> None:
    settings = TlsSettings()
    assert settings.uses_system_trust
    assert TEST_CA_SUBJECT in [ca["subject"] for ca in build_client_context(settings).get_ca_certs()]
    connect(settings, pki.server_cert, pki.server_key)


def test_a_ca_file_replaces_the_system_trust(pki: TestPki, system_store: None) -> None:
    settings = TlsSettings(ca_file=pki.other_ca)
    assert TEST_CA_SUBJECT not in [ca["subject"] for ca in build_client_context(settings).get_ca_certs()]
    verify_failure(settings, pki.server_cert, pki.server_key)


def test_system_trust_can_be_added_to_a_ca_file(pki: TestPki, system_store: None) -> None:
    settings = TlsSettings(ca_file=pki.other_ca, system_trust=True)
    assert len(build_client_context(settings).get_ca_certs()) == 2
    connect(settings, pki.server_cert, pki.server_key)


def test_no_trust_anchor_at_all_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as error:
        build_client_context(TlsSettings(system_trust=False), "routes[0].")
    assert error.value.key == "routes[0].ssl_ca"
    assert "no trust anchors" in error.value.problem


# ---- CRL -----------------------------------------------------------------------------------------------


def test_crl_loads_and_checks_the_leaf(pki: TestPki) -> None:
    settings = TlsSettings(ca_file=pki.ca, crl_file=pki.crl_empty)
    context = build_client_context(settings)
    assert context.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    connect(settings, pki.server_cert, pki.server_key)


def test_no_crl_no_crl_check(pki: TestPki) -> None:
    assert not build_client_context(TlsSettings(ca_file=pki.ca)).verify_flags & ssl.VERIFY_CRL_CHECK_LEAF


def test_revoked_server_certificate(pki: TestPki) -> None:
    error, tls = verify_failure(TlsSettings(ca_file=pki.ca, crl_file=pki.crl_revoking_server), pki.server_cert,
                                pki.server_key)
    assert error.verify_code == 23
    described = describe_tls_failure(error, tls)
    assert (described.metric_label, described.message) == ("revoked", "upstream certificate verify failed: certificate revoked")


def test_missing_crl_is_a_config_error(pki: TestPki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        build_client_context(TlsSettings(ca_file=pki.ca, crl_file=tmp_path / "none.crl"), "routes[0].")
    assert error.value.key == "routes[0].ssl_crl"
    assert "cannot read the file" in error.value.problem


def test_a_crl_file_without_a_crl_is_a_config_error(pki: TestPki) -> None:
    with pytest.raises(ConfigError) as error:
        context = build_client_context(TlsSettings(ca_file=pki.ca, crl_file=pki.other_ca), "routes[0].")
        # What happens instead: the "CRL" file's certificate is now a trust anchor.
        assert len(context.get_ca_certs()) == 1, context.get_ca_certs()
    assert error.value.key == "routes[0].ssl_crl"


# ---- client certificate -----------------------------------------------------------------------------


def test_client_certificate_is_presented(pki: TestPki) -> None:
    settings = TlsSettings(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key, tls_versions=("TLSv1.2",))
    connect(settings, pki.server_cert, pki.server_key, client_ca=pki.ca)
    with pytest.raises(ssl.SSLError):  # the same server refuses a client without one
        connect(replace(settings, cert_file=None, key_file=None), pki.server_cert, pki.server_key, client_ca=pki.ca)


def _encrypted_key(pki: TestPki, path: Path) -> Path:
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), password=None)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"secret")))
    return path


@pytest.mark.parametrize(("problem", "key", "message"), [
    ("mismatch", "ssl_key", "{key} is not the key of the certificate {cert}"),
    ("missing key", "ssl_key", "cannot read {key}: No such file or directory"),
    ("missing cert", "ssl_cert", "cannot read {cert}: No such file or directory"),
    ("not a certificate", "ssl_cert", "{cert} holds no PEM certificate"),
    ("not a key", "ssl_key", "{key} holds no PEM private key"),
    ("encrypted key", "ssl_key", "{key} is encrypted; give an unencrypted key"),
])
def test_bad_client_certificate_is_a_config_error(pki: TestPki, tmp_path: Path, problem: str, key: str,
                                                  message: str) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("garbage\n")
    cert_file, key_file = {
        "mismatch": (pki.client_cert, pki.server_key),
        "missing key": (pki.client_cert, tmp_path / "none.key"),
        "missing cert": (tmp_path / "none.pem", pki.client_key),
        "not a certificate": (garbage, pki.client_key),
        "not a key": (pki.client_cert, garbage),
        "encrypted key": (pki.client_cert, _encrypted_key(pki, tmp_path / "encrypted.key")),
    }[problem]
    with pytest.raises(ConfigError) as error:
        build_client_context(TlsSettings(ca_file=pki.ca, cert_file=cert_file, key_file=key_file), "routes[0].")
    assert error.value.key == f"routes[0].{key}"
    assert message.format(cert=cert_file, key=key_file) in error.value.problem


# ---- describe_tls_failure ------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "host", "code", "label", "message"), [
    ("wrong host", "localhost", 62, "host_name_mismatch", "host name mismatch (expected localhost)"),
    ("wrong ip", "127.0.0.2", 64, "host_name_mismatch", "IP address mismatch (expected 127.0.0.2)"),
    ("expired", "localhost", 10, "expired", "certificate has expired"),
    ("not yet valid", "localhost", 9, "not_yet_valid", "certificate is not yet valid"),
    ("other CA", "localhost", 20, "certificate_untrusted", "issuer not trusted (unable to get local issuer certificate)"),
    ("self-signed", "localhost", 18, "certificate_untrusted", "self-signed certificate"),
])
def test_describe_verification_failures(pki: TestPki, extra: dict[str, Path], case: str, host: str, code: int,
                                        label: str, message: str) -> None:
    cert, key, ca = {
        "wrong host": (pki.wrong_host_cert, pki.wrong_host_key, pki.ca),
        "wrong ip": (pki.server_cert, pki.server_key, pki.ca),
        "expired": (pki.expired_cert, pki.expired_key, pki.ca),
        "not yet valid": (extra["future"], extra["future"].with_suffix(".key"), extra["unit-ca"]),
        "other CA": (pki.other_server_cert, pki.other_server_key, pki.ca),
        "self-signed": (extra["self-signed"], extra["self-signed"].with_suffix(".key"), pki.ca),
    }[case]
    error, tls = verify_failure(TlsSettings(ca_file=ca), cert, key, host)
    assert error.verify_code == code
    described = describe_tls_failure(error, tls)
    assert isinstance(described, CertificateVerifyError)
    assert described.metric_label == label
    assert described.message.startswith("upstream certificate verify failed: ")
    assert message in described.message


def test_describe_unknown_verify_code_keeps_openssls_words(pki: TestPki) -> None:
    tls = upstream(TlsSettings(ca_file=pki.ca))
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_code, error.verify_message = 7, "certificate signature failure"  # type: ignore[attr-defined]
    described = describe_tls_failure(error, tls)
    assert (described.metric_label, described.message) == (
        "certificate_untrusted", "upstream certificate verify failed: certificate signature failure")


def test_describe_no_common_version(pki: TestPki) -> None:
    settings = TlsSettings(ca_file=pki.ca, tls_versions=("TLSv1.3",))
    tls = upstream(settings)
    with pytest.raises(ssl.SSLError) as failure:
        handshake(tls.context, server_context(pki.server_cert, pki.server_key, maximum_version=ssl.TLSVersion.TLSv1_2))
    described = describe_tls_failure(failure.value, tls)
    assert described.metric_label == "protocol_version"
    assert described.message.startswith("upstream TLS handshake failed: no TLS version in common")


def test_describe_no_common_cipher(pki: TestPki) -> None:
    settings = TlsSettings(ca_file=pki.ca, tls_versions=("TLSv1.2",), cipher="ECDHE-ECDSA-AES128-GCM-SHA256")
    tls = upstream(settings)
    with pytest.raises(ssl.SSLError) as failure:  # the server has an RSA key
        handshake(tls.context, server_context(pki.server_cert, pki.server_key))
    described = describe_tls_failure(failure.value, tls)
    assert described.metric_label == "no_shared_cipher"
    assert "no cipher in common" in described.message


@pytest.mark.parametrize(("exc", "label", "fragment"), [
    (ConnectionResetError(104, "Connection reset by peer"), "upstream_lost", "closed the connection during the TLS handshake"),
    (EOFError(), "upstream_lost", "closed the connection"),
    (TimeoutError("slow"), "tls_error", "TimeoutError: slow"),
])
def test_describe_other_failures(pki: TestPki, exc: BaseException, label: str, fragment: str) -> None:
    described = describe_tls_failure(exc, upstream(TlsSettings(ca_file=pki.ca)))
    assert isinstance(described, UpstreamTlsError) and not isinstance(described, CertificateVerifyError)
    assert described.metric_label == label and fragment in described.message

"""engines/mysql/wire/auth and ed25519: scrambles, caching_sha2 full authentication (both
sides), clear passwords and MariaDB's client_ed25519, checked against the documented
formulas, PyMySQL's independent implementation, MariaDB's published ed25519 vector and the
Ed25519 of ``cryptography``."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dbsentry.engines.mysql.wire import auth, ed25519
from dbsentry.engines.mysql.wire import commands as cmd
from dbsentry.engines.mysql.wire import constants as c
from dbsentry.engines.mysql.wire import generic as g
from dbsentry.engines.mysql.wire import handshake as hs
from dbsentry.engines.mysql.wire import results as res
from dbsentry.engines.mysql.wire.packets import PacketSplitter, encode_packet, encode_packets
from dbsentry.errors import ProtocolError

pymysql_auth = pytest.importorskip("pymysql._auth")

NONCE = bytes.fromhex("33583818445e1648407911302a41615564776e0d")  # a real server's


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


passwords = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=30)
nonces = st.binary(min_size=20, max_size=20)


# ---------------------------------------------------------------------- mysql_native_password


def test_native_scramble_is_the_documented_formula() -> None:
    pw = b"secret"
    sha1 = hashlib.sha1
    expected = bytes(a ^ b for a, b in zip(sha1(pw).digest(), sha1(NONCE + sha1(sha1(pw).digest()).digest()).digest(), strict=True))
    assert auth.native_password_scramble("secret", NONCE) == expected
    assert auth.native_password_scramble("", NONCE) == b""
    assert auth.check_native_scramble(expected, NONCE, "secret")
    assert not auth.check_native_scramble(expected, NONCE, "Secret")


@settings(max_examples=50)
@given(passwords, nonces)
def test_native_scramble_matches_pymysql(password: str, nonce: bytes) -> None:
    assert auth.native_password_scramble(password, nonce) == pymysql_auth.scramble_native_password(password.encode(), nonce)


# ---------------------------------------------------------------------- caching_sha2_password


def test_caching_sha2_scramble_is_the_documented_formula() -> None:
    sha = hashlib.sha256
    s1 = sha(b"secret").digest()
    expected = bytes(a ^ b for a, b in zip(s1, sha(sha(s1).digest() + NONCE).digest(), strict=True))
    assert auth.caching_sha2_scramble("secret", NONCE) == expected
    assert len(expected) == 32
    assert auth.caching_sha2_scramble(b"", NONCE) == b""
    assert auth.check_caching_sha2_scramble(expected, NONCE, "secret")
    # The greeting's nonce arrives with its NUL sometimes; only 20 bytes count.
    assert auth.caching_sha2_scramble("secret", NONCE + b"\x00") == expected


@settings(max_examples=50)
@given(passwords, nonces)
def test_caching_sha2_scramble_matches_pymysql(password: str, nonce: bytes) -> None:
    assert auth.caching_sha2_scramble(password, nonce) == pymysql_auth.scramble_caching_sha2(password.encode(), nonce)


def test_rsa_full_authentication_both_sides(key: rsa.RSAPrivateKey) -> None:
    encrypted = auth.rsa_encrypt_password("tøken-123", NONCE, _pem(key))
    assert len(encrypted) == 256
    assert auth.rsa_decrypt_password(encrypted, NONCE, key) == "tøken-123"
    # What PyMySQL sends decrypts the same, and what we send PyMySQL's formula would.
    theirs = pymysql_auth.sha2_rsa_encrypt("tøken-123".encode(), NONCE, _pem(key))
    assert auth.rsa_decrypt_password(theirs, NONCE, key) == "tøken-123"
    with pytest.raises(auth.AuthError, match="cannot be decrypted"):
        auth.rsa_decrypt_password(encrypted[::-1], NONCE, key)
    with pytest.raises(auth.AuthError, match="not a PEM key"):
        auth.rsa_encrypt_password("x", NONCE, b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")


def test_caching_sha2_client_fast_auth_and_full_auth(key: rsa.RSAPrivateKey) -> None:
    fast = auth.CachingSha2Client("pw", NONCE, secure=False)
    assert fast.first() == auth.caching_sha2_scramble("pw", NONCE)
    assert fast.more_data(auth.FAST_AUTH_SUCCESS) is None
    # Full authentication inside TLS: the password in the clear.
    tls = auth.CachingSha2Client("pw", NONCE, secure=True)
    assert tls.more_data(auth.PERFORM_FULL_AUTHENTICATION) == b"pw\x00"
    # On plaintext: ask for the key (0x02), then send the password encrypted with it.
    plain = auth.CachingSha2Client("pw", NONCE, secure=False)
    assert plain.more_data(auth.PERFORM_FULL_AUTHENTICATION) == auth.REQUEST_PUBLIC_KEY
    sent = plain.more_data(_pem(key))
    assert sent is not None
    assert auth.rsa_decrypt_password(sent, NONCE, key) == "pw"
    # A key known beforehand saves the round trip.
    known = auth.CachingSha2Client("pw", NONCE, secure=False, public_key_pem=_pem(key))
    sent = known.more_data(auth.PERFORM_FULL_AUTHENTICATION)
    assert sent is not None and auth.rsa_decrypt_password(sent, NONCE, key) == "pw"
    with pytest.raises(auth.AuthError, match="unexpected caching_sha2_password data"):
        auth.CachingSha2Client("pw", NONCE, secure=False).more_data(b"\x09")
    with pytest.raises(ProtocolError):
        known.more_data(b"more")


# ---------------------------------------------------------------------- clear passwords, nonces


def test_clear_password_both_ways() -> None:
    assert auth.clear_password_response("tok") == b"tok\x00"
    assert auth.read_clear_password(b"tok\x00") == "tok"
    assert auth.read_clear_password(b"tok") == "tok"
    assert auth.read_clear_password("ü".encode() + b"\x00") == "ü"
    with pytest.raises(auth.AuthError, match="NUL inside"):
        auth.read_clear_password(b"a\x00b\x00")
    with pytest.raises(auth.AuthError, match="UTF-8"):
        auth.read_clear_password(b"\xff\x00")
    with pytest.raises(auth.AuthError, match="longer than"):
        auth.read_clear_password(b"x" * 5000)
    with pytest.raises(auth.AuthError):
        auth.clear_password_response("a\x00")


def test_proxy_nonces() -> None:
    seen = {auth.new_nonce() for _ in range(50)}
    assert len(seen) == 50
    for nonce in seen:
        assert len(nonce) == 20
        assert all(0 < b < 128 and b != ord("$") for b in nonce)


# ---------------------------------------------------------------------- client_ed25519


def test_ed25519_public_key_matches_mariadbs_published_value() -> None:
    # MariaDB's documentation: SELECT ed25519_password("secret") -> this.
    assert ed25519.password_hash(b"secret") == "ZIgUREUg5PVgQ6LskhXmO+eZLS0nC8be6HPjYWR4YJY"


def test_ed25519_of_a_32_byte_password_is_rfc8032_with_it_as_seed() -> None:
    # MariaDB hashes the password where RFC 8032 hashes the 32-byte seed: the same when
    # the password is 32 bytes long.
    seed = bytes(range(32))
    message = b"n" * 32
    assert ed25519.sign(seed, message) == Ed25519PrivateKey.from_private_bytes(seed).sign(message)
    assert ed25519.public_key(seed) == Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


@settings(max_examples=20, deadline=None)
@given(st.binary(max_size=80), st.binary(min_size=32, max_size=32))
def test_ed25519_signatures_verify(password: bytes, nonce: bytes) -> None:
    signature = auth.ed25519_response(password, nonce)
    assert len(signature) == 64
    Ed25519PublicKey.from_public_bytes(ed25519.public_key(password)).verify(signature, nonce)
    assert base64.b64decode(ed25519.password_hash(password) + "=") == ed25519.public_key(password)


def test_ed25519_needs_the_32_byte_nonce() -> None:
    with pytest.raises(auth.AuthError, match="32-byte nonce"):
        auth.ed25519_response("pw", NONCE)


# ---------------------------------------------------------------------- the proxy's side, with a real client


class TinyServer:
    """A one-connection MySQL server made of the codec, for PyMySQL to log in to: it checks
    the password the way the proxy will (full authentication for caching_sha2, the clear
    password for mysql_clear_password, the scramble for mysql_native_password) and answers
    every query with the user name."""

    CAPS = (
        c.CLIENT_LONG_PASSWORD | c.CLIENT_PROTOCOL_41 | c.CLIENT_SECURE_CONNECTION | c.CLIENT_PLUGIN_AUTH
        | c.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | c.CLIENT_CONNECT_WITH_DB | c.CLIENT_CONNECT_ATTRS
        | c.CLIENT_TRANSACTIONS | c.CLIENT_MULTI_RESULTS | c.CLIENT_DEPRECATE_EOF
    )  # fmt: skip

    def __init__(self, plugin: str, token: str, key: rsa.RSAPrivateKey | None, switch_to: str | None = None) -> None:
        self.plugin, self.token, self.key, self.switch_to = plugin, token, key, switch_to
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(10)
                self._serve(conn)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.listener.close()

    def _serve(self, conn: socket.socket) -> None:
        splitter = PacketSplitter(first_seq=1)
        queue: list[bytes] = []
        seq = 0

        def read() -> bytes:
            nonlocal seq
            while not queue:
                data = conn.recv(65536)
                if not data:
                    raise ConnectionError("client went away")
                for pk in splitter.feed(data):
                    queue.append(pk.payload)
                    seq = (pk.last_seq + 1) & 0xFF
            return queue.pop(0)

        def send(payload: bytes) -> None:
            nonlocal seq
            data, seq = encode_packet(payload, seq)
            splitter.expect(seq)
            conn.sendall(data)

        nonce = auth.new_nonce()
        send(hs.encode_handshake(hs.Handshake("8.0.99-dbsentry", 1234, nonce, self.CAPS, 255, 2, self.plugin)))
        login = hs.decode_client_handshake(read())
        assert isinstance(login, hs.HandshakeResponse)
        caps = login.capabilities & self.CAPS
        self.seen.append(f"login {login.user} {login.auth_plugin_name} db={login.database}")
        password: str | None = None
        answer = login.auth_response
        plugin = self.plugin
        if self.switch_to is not None:
            plugin = self.switch_to
            send(hs.encode_auth_switch_request(hs.AuthSwitchRequest(plugin, nonce + b"\x00" if plugin != auth.CLEAR_PASSWORD else b"")))
            answer = hs.decode_auth_switch_response(read()).data
        if plugin == auth.CACHING_SHA2_PASSWORD:
            server = auth.CachingSha2Server(nonce, secure=False, private_key=self.key)
            ask = server.start(answer)
            assert ask is not None
            send(ask)
            while password is None:
                reply, password = server.client_data(read())
                self.seen.append("public key" if reply else "password")
                if reply is not None:
                    send(reply)
        elif plugin == auth.CLEAR_PASSWORD:
            password = auth.read_clear_password(answer)
        elif plugin == auth.NATIVE_PASSWORD:
            password = self.token if auth.check_native_scramble(answer, nonce, self.token) else ""
        if password != self.token:
            send(g.encode_err(g.ERR(1045, f"dbsentry: access denied for {login.user}", "28000")))
            return
        send(g.encode_ok(g.OK(status=c.SERVER_STATUS_AUTOCOMMIT), caps))
        splitter.expect(0)  # the command phase: every command starts a new sequence
        while True:
            command = cmd.decode_command(read(), caps)
            self.seen.append(type(command).__name__)
            if isinstance(command, cmd.Quit):
                return
            seq = 1
            col = res.ColumnDefinition("who", c.ColumnType.VAR_STRING, charset=255, length=400)
            packets = [res.encode_column_count(res.ColumnCount(1), caps), res.encode_column_definition(col)]
            if not caps & c.CLIENT_DEPRECATE_EOF:
                packets.append(g.encode_eof(g.EOF(0, 2)))
            packets.append(res.encode_text_row(res.TextRow((login.user.encode(),))))
            end = g.OK(status=2, header=0xFE) if caps & c.CLIENT_DEPRECATE_EOF else None
            packets.append(g.encode_ok(end, caps) if end else g.encode_eof(g.EOF(0, 2)))
            if isinstance(command, cmd.Query) and command.sql.upper().startswith(b"SET "):
                packets = [g.encode_ok(g.OK(status=2), caps)]  # PyMySQL reads one packet
            data, seq = encode_packets(packets, seq)
            splitter.expect(0)
            conn.sendall(data)


@pytest.mark.parametrize(
    ("plugin", "switch_to", "steps"),
    [
        (auth.CACHING_SHA2_PASSWORD, None, ["public key", "password"]),
        (auth.NATIVE_PASSWORD, auth.CLEAR_PASSWORD, []),
        (auth.NATIVE_PASSWORD, None, []),
        (auth.NATIVE_PASSWORD, auth.CACHING_SHA2_PASSWORD, ["public key", "password"]),
    ],
)
def test_pymysql_logs_in_to_the_codec(plugin: str, switch_to: str | None, steps: list[str], key: rsa.RSAPrivateKey) -> None:
    import pymysql

    server = TinyServer(plugin, "tok-123_ABC.x", key, switch_to)  # PyMySQL sends passwords as latin-1
    conn = pymysql.connect(host="127.0.0.1", port=server.port, user="alice@example.com", password="tok-123_ABC.x", database="prod")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT who")
            assert cur.fetchall() == (("alice@example.com",),)
    finally:
        conn.close()
    server.thread.join(5)
    assert server.error is None, server.error
    assert server.seen[0] == f"login alice@example.com {plugin} db=prod"
    assert server.seen[1 : 1 + len(steps)] == steps
    assert server.seen[-1] == "Quit"


def test_wrong_token_gets_access_denied(key: rsa.RSAPrivateKey) -> None:
    import pymysql

    server = TinyServer(auth.CACHING_SHA2_PASSWORD, "right", key)
    with pytest.raises(pymysql.err.OperationalError) as info:
        pymysql.connect(host="127.0.0.1", port=server.port, user="bob", password="wrong")
    assert info.value.args == (1045, "dbsentry: access denied for bob")
    server.thread.join(5)
    assert server.error is None


def test_caching_sha2_server_refusals(key: rsa.RSAPrivateKey) -> None:
    plain = auth.CachingSha2Server(NONCE, secure=False)
    with pytest.raises(auth.AuthError, match="before the client's scramble"):
        plain.client_data(b"x")
    assert plain.start(b"") is None  # empty password: the caller refuses
    assert plain.start(b"s" * 32) == b"\x01\x04"
    with pytest.raises(auth.AuthError, match="no RSA key for caching_sha2_password: connect with TLS"):
        plain.client_data(auth.REQUEST_PUBLIC_KEY)
    with pytest.raises(auth.AuthError, match=r"cannot be sent without TLS: connect with TLS \(--ssl\)"):
        plain.client_data(b"x" * 256)
    tls = auth.CachingSha2Server(NONCE, secure=True)
    tls.start(b"s" * 32)
    assert tls.client_data(b"token\x00") == (None, "token")
    keyed = auth.CachingSha2Server(NONCE, secure=False, private_key=key)
    keyed.start(b"s" * 32)
    with pytest.raises(auth.AuthError, match="does not match the proxy's RSA key"):
        keyed.client_data(b"short")

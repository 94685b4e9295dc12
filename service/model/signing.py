"""Signed bundles: an Ed25519 signature over a bundle's ``SHA256SUMS``, and the keys a server trusts.

``SHA256SUMS`` catches a corrupted bundle, but anyone who can write the files can rewrite the sums too. A
signature made with a private key the writer does not have closes that gap: ``gshap sign BUNDLE --key KEY``
writes ``SIGNATURE`` beside ``SHA256SUMS``, and a server started with ``GSHAP_TRUSTED_KEYS`` refuses a bundle that
is unsigned or signed by a key it does not list (at start-up and at reload). ``SHA256SUMS`` names every other
file with its sha256 and is checked on load, so the signature covers every byte of the bundle.

``SIGNATURE`` is a small JSON object::

    {"algorithm": "ed25519", "key": "ed25519:3f2a9c...", "public_key": "<base64 of the 32-byte key>",
     "signed_file": "SHA256SUMS", "signature": "<base64 of the 64-byte signature>"}

The signed message is ``b"gshap-bundle-signature-v1\\n"`` followed by the bytes of ``SHA256SUMS`` (the prefix keeps
a bundle signature from being mistaken for a signature of anything else). ``key`` is the key's id: ``ed25519:``
and the first 16 hex digits of the sha256 of the raw public key. ``SIGNATURE`` is not listed in ``SHA256SUMS``.

Keys: private keys are PEM (``openssl genpkey -algorithm ed25519``) or OpenSSH files; public keys are PEM,
OpenSSH (``ssh-ed25519 AAAA...``) or the base64 of the raw 32 bytes, given inline or as a file path. Nothing here
holds a key: tests make their own. No web framework here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from service.model.store import CHECKSUMS, BundleError

__all__ = [
    "SIGNATURE_FILE",
    "Signature",
    "SigningKeyError",
    "TrustedKeys",
    "check_signature",
    "generate_key",
    "key_id",
    "load_private_key",
    "parse_public_key",
    "read_signature",
    "sign_bundle",
]

SIGNATURE_FILE = "SIGNATURE"
ALGORITHM = "ed25519"
_CONTEXT = b"gshap-bundle-signature-v1\n"


class SigningKeyError(ValueError):
    """A key file or key text that cannot be read as an Ed25519 key; the message says which and why."""


@dataclass(frozen=True)
class Signature:
    """A bundle's verified signature: the signing key's id and its public key (base64 of the raw 32 bytes)."""

    key: str
    public_key: str


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """``ed25519:`` and the first 16 hex digits of the sha256 of the raw public key."""
    return f"{ALGORITHM}:{hashlib.sha256(_raw(public)).hexdigest()[:16]}"


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A public key from PEM, OpenSSH (``ssh-ed25519 AAAA...``) or base64 text of the raw 32 bytes."""
    stripped = text.strip()
    try:
        if stripped.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(stripped.encode())
        elif stripped.startswith("ssh-"):
            key = serialization.load_ssh_public_key(stripped.encode())
        else:
            raw = base64.b64decode(stripped, validate=True)
            if len(raw) != 32:
                raise SigningKeyError(f"a raw Ed25519 public key has 32 bytes, this one {len(raw)}")
            return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, UnsupportedAlgorithm, binascii.Error) as exc:
        if isinstance(exc, SigningKeyError):
            raise
        raise SigningKeyError(f"not an Ed25519 public key (PEM, OpenSSH or base64 of 32 bytes): {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"not an Ed25519 public key but a {type(key).__name__}")
    return key


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS#8) or OpenSSH file without a passphrase."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the key {p}: {exc.strerror}") from None
    key: object
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY"):
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"{p} is not an unencrypted PEM or OpenSSH private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{p} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def generate_key(private_path: Path) -> str:
    """Write a new Ed25519 private key (PEM, mode 0600) and its public key beside it (``<path>.pub``, PEM);
    returns the key id. Refuses to overwrite an existing file."""
    public_path = private_path.with_name(private_path.name + ".pub")
    for p in (private_path, public_path):
        if p.exists():
            raise SigningKeyError(f"{p} exists; not overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    private_path.touch(mode=0o600)
    private_path.write_bytes(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key_id(key.public_key())


def sign_bundle(folder: str | Path, key: Ed25519PrivateKey) -> Signature:
    """Write ``folder/SIGNATURE``: the key's signature over ``folder/SHA256SUMS`` (which must exist; the bundle
    is verified on load, not here). Replaces an earlier signature."""
    folder = Path(folder)
    sums = folder / CHECKSUMS
    if not sums.is_file():
        raise BundleError(f"model bundle {folder}: {CHECKSUMS} is missing; nothing to sign")
    public = key.public_key()
    signature = key.sign(_CONTEXT + sums.read_bytes())
    body = {
        "algorithm": ALGORITHM,
        "key": key_id(public),
        "public_key": base64.b64encode(_raw(public)).decode(),
        "signed_file": CHECKSUMS,
        "signature": base64.b64encode(signature).decode(),
    }
    (folder / SIGNATURE_FILE).write_text(json.dumps(body, indent=2) + "\n")
    return Signature(key=body["key"], public_key=body["public_key"])


def read_signature(folder: str | Path, sums: bytes | None = None) -> Signature | None:
    """The bundle's signature, verified against the public key it names; None when the bundle is unsigned.

    ``sums``: the bytes of ``SHA256SUMS`` as the caller read them (default: read here). A ``SIGNATURE`` that is
    malformed or does not verify is a tampered bundle: :class:`BundleError`, whatever keys are trusted.
    """
    folder = Path(folder)
    path = folder / SIGNATURE_FILE
    if not path.is_file():
        return None
    where = f"model bundle {folder}: {SIGNATURE_FILE}"
    try:
        body = json.loads(path.read_text())
        if not isinstance(body, dict) or body.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm is not {ALGORITHM!r}")
        if body.get("signed_file") != CHECKSUMS:
            raise ValueError(f"signed_file is not {CHECKSUMS!r}")
        public = parse_public_key(str(body["public_key"]))
        signature = base64.b64decode(str(body["signature"]), validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise BundleError(f"{where} is malformed ({' '.join(str(exc).split())[:200]})") from None
    if body.get("key") != key_id(public):
        raise BundleError(f"{where} names key {body.get('key')!r} but holds the public key of {key_id(public)}")
    if sums is None:
        try:
            sums = (folder / CHECKSUMS).read_bytes()
        except OSError:
            raise BundleError(f"model bundle {folder}: {CHECKSUMS} is missing") from None
    try:
        public.verify(signature, _CONTEXT + sums)
    except InvalidSignature:
        raise BundleError(f"{where} does not match {CHECKSUMS} (the bundle was changed after signing)") from None
    return Signature(key=key_id(public), public_key=base64.b64encode(_raw(public)).decode())


class TrustedKeys:
    """The public keys a server trusts (``GSHAP_TRUSTED_KEYS``), by key id. Each entry is a key (PEM, OpenSSH or
    base64) or the path of a file holding one."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self.keys = dict(keys)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedKeys:
        keys: dict[str, Ed25519PublicKey] = {}
        for entry in entries:
            text = entry.strip()
            if not text:
                continue
            source = text
            inline = text.startswith(("ssh-", "-----BEGIN"))
            if not inline and Path(text).is_file():
                try:
                    text = Path(text).read_text()
                except (OSError, UnicodeDecodeError) as exc:
                    raise SigningKeyError(f"GSHAP_TRUSTED_KEYS: cannot read {source}: {exc}") from None
            try:
                public = parse_public_key(text)
            except SigningKeyError as exc:
                # base64 may hold a "/": only a text that is no key at all is reported as a missing file
                if not inline and text == source and "/" in text:
                    raise SigningKeyError(
                        f"GSHAP_TRUSTED_KEYS: {source[:80]}: no such key file, and not a key"
                    ) from None
                raise SigningKeyError(f"GSHAP_TRUSTED_KEYS: {source[:80]}: {exc}") from None
            keys[key_id(public)] = public
        return cls(keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def ids(self) -> list[str]:
        return sorted(self.keys)


def check_signature(folder: str | Path, trusted: TrustedKeys | None, sums: bytes | None = None) -> Signature | None:
    """Read and verify ``folder``'s signature and, when ``trusted`` holds keys, require one of them.

    Raises :class:`BundleError` with one line naming the bundle and why: a signature that does not verify, an
    unsigned bundle (when keys are trusted), or a signature by a key that is not trusted.
    """
    signature = read_signature(folder, sums)
    if trusted:
        if signature is None:
            raise BundleError(
                f"model bundle {folder}: unsigned ({SIGNATURE_FILE} is missing) and GSHAP_TRUSTED_KEYS requires "
                "a signature by a trusted key"
            )
        if signature.key not in trusted.keys:
            raise BundleError(
                f"model bundle {folder}: signed by {signature.key}, which is not in GSHAP_TRUSTED_KEYS "
                f"({', '.join(trusted.ids())})"
            )
    return signature

"""Webhook signing: Ed25519 key pairs derived from the seed, the published JWK set, and signatures."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


@dataclass(frozen=True)
class SigningKey:
    """One webhook key; the private half never leaves the emulator."""

    kid: str
    private: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def derive(cls, seed: int, kid: str) -> SigningKey:
        """Deterministic key for (seed, kid), so a restarted emulator publishes the same key."""
        raw = hashlib.sha256(f"lamina-emulator-webhook/{seed}/{kid}".encode()).digest()
        return cls(kid, Ed25519PrivateKey.from_private_bytes(raw))

    def jwk(self) -> dict[str, str]:
        x = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": base64.urlsafe_b64encode(x).rstrip(b"=").decode("ascii"),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }

    def sign(self, timestamp: int, body: bytes) -> str:
        """Hex signature over the UTF-8 bytes of `"<timestamp>." + body`."""
        return self.private.sign(f"{timestamp}.".encode() + body).hex()


class KeyRing:
    """Published keys (oldest first) and the one that signs (the newest)."""

    def __init__(self, seed: int, *, rotated: bool = False) -> None:
        self._seed = seed
        self.keys: list[SigningKey] = [SigningKey.derive(seed, "lamina-webhook-v1")]
        if rotated:
            self.rotate()

    def rotate(self) -> SigningKey:
        key = SigningKey.derive(self._seed, f"lamina-webhook-v{len(self.keys) + 1}")
        self.keys = [*self.keys, key]
        return key

    @property
    def active(self) -> SigningKey:
        return self.keys[-1]

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [k.jwk() for k in self.keys]}

"""admission.stores.naming: the Redis key of a client's bucket, the one place it is named.

A key is `<prefix>:{<digest>}` (the `ADMISSION_RATE` bucket) or `<prefix>:{<digest>}:<bucket>`
(a route policy's bucket), where `<digest>` is a keyed BLAKE2b of the client key: whoever can
read Redis key names (a `SCAN`, `MONITOR`, a slow log, a backup) never reads an API key or
an address from them. The braces make each client its own Redis Cluster hash slot, so a
client's buckets stay together whatever its key.

The digest's secret is `ADMISSION_KEY_SECRET` when set, else one derived from
`ADMISSION_KEY_PREFIX`. Every worker and instance sharing a Redis derives the same one from
the same settings, so they name the same keys. Derived from the prefix, it hides high-entropy
keys (API keys) but not guessable ones: an address can be found by hashing every candidate.
A secret of one's own closes that. Changing either renames every bucket: each client starts
again from a full bucket, once, and the old keys expire on their own when they would have
filled up again.
"""

from __future__ import annotations

import functools
import hashlib

# 16 bytes: collisions between client keys are out of reach, and key names stay short.
DIGEST_BYTES = 16


def naming_secret(prefix: str, key_secret: str | None) -> bytes:
    """naming_secret is the key of the digest: `key_secret` when given, else derived from
    `prefix` (the same for every process with the same settings)."""
    if key_secret:
        return key_secret.encode("utf-8")
    return b"admission-key-names:" + prefix.encode("utf-8")


def client_tag(client: str, secret: bytes) -> bytes:
    """client_tag is the keyed digest standing for `client` in key names, in hex."""
    digest = _keyed(secret).copy()
    digest.update(client.encode("utf-8", "surrogateescape"))
    return digest.hexdigest().encode()


@functools.lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hashlib.blake2b:
    # Keying BLAKE2b costs as much as hashing a short key: done once per secret, then copied
    # (1.3 us instead of 2.7 us a name, measured on a loaded machine).
    # BLAKE2b takes a key of at most 64 bytes: a longer secret is hashed down to one.
    key = secret if len(secret) <= 64 else hashlib.blake2b(secret).digest()
    return hashlib.blake2b(key=key, digest_size=DIGEST_BYTES)


def bucket_key(prefix: str, secret: bytes, client: str, bucket: str = "") -> bytes:
    """bucket_key is the Redis key of `client`'s bucket named `bucket` ("": the
    `ADMISSION_RATE` bucket) under `prefix`."""
    key = prefix.encode() + b":{" + client_tag(client, secret) + b"}"
    return key + b":" + bucket.encode("utf-8", "surrogateescape") if bucket else key


def client_pattern(prefix: str, secret: bytes, client: str, bucket_prefix: str = "") -> bytes:
    """client_pattern is the `SCAN MATCH` pattern of `client`'s route policy buckets: every
    one, or those whose name starts with `bucket_prefix`; glob characters are escaped."""
    base = _escape(bucket_key(prefix, secret, client))
    return base + b":" + _escape(bucket_prefix.encode("utf-8", "surrogateescape")) + b"*"


def _escape(key: bytes) -> bytes:
    out = bytearray()
    for byte in key:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)

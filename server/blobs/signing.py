"""Short-lived HMAC signatures for the server's own blob URLs, bound to one object, one method and one user."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from ..errors import Gone, Unauthorized


@dataclass(frozen=True)
class BlobGrant:
    """What a signed URL allows: `method` on chunk `hash` in the given stored form, until `expires`."""

    method: str
    hash: str
    encoding: str
    size: int
    stored_size: int
    user_id: int
    expires: int


class UrlSigner:
    """Signs and checks blob URLs with a server secret."""

    def __init__(self, secret: bytes, clock=time.time) -> None:
        self._secret = secret
        self._clock = clock

    def _mac(self, g: BlobGrant) -> str:
        msg = f"{g.method}\n{g.hash}\n{g.encoding}\n{g.size}\n{g.stored_size}\n{g.user_id}\n{g.expires}"
        return hmac.new(self._secret, msg.encode(), hashlib.sha256).hexdigest()

    def grant(self, method: str, hash_: str, encoding: str, size: int, stored_size: int, user_id: int,
              ttl_s: float) -> tuple[str, int]:
        """Return the query string of a signed URL and its expiry (unix seconds)."""
        g = BlobGrant(method, hash_, encoding, size, stored_size, user_id, int(self._clock() + ttl_s))
        query = urlencode({"enc": encoding, "size": size, "ssize": stored_size, "uid": user_id,
                           "exp": g.expires, "sig": self._mac(g)})
        return query, g.expires

    def check(self, method: str, hash_: str, params: dict[str, str]) -> BlobGrant:
        """The grant a URL carries, or Unauthorized (forged or altered) / Gone (expired)."""
        try:
            g = BlobGrant(method, hash_, params["enc"], int(params["size"]), int(params["ssize"]),
                          int(params["uid"]), int(params["exp"]))
            sig = params["sig"]
        except (KeyError, ValueError):
            raise Unauthorized("this blob URL is incomplete or malformed") from None
        if not hmac.compare_digest(sig, self._mac(g)):
            raise Unauthorized("this blob URL's signature does not match: it was altered or not issued here")
        if g.expires < self._clock():
            raise Gone("this blob URL has expired; ask the server for a new one")
        return g

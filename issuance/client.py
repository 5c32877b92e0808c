"""One certificate order over ACME (RFC 8555), HTTP-01, through certbot's `acme` library.

It knows nothing of etcd: the account key comes from the caller, and so do the two
functions that publish and withdraw a challenge's answer (issuance/orders.py writes them
to etcd for every gogeta to serve). `acme` makes its HTTP calls with requests, on sockets
that gevent has patched in a gogeta process: an order waits without blocking anyone.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable

import josepy as jose
import requests
from acme import challenges, crypto_util, errors, messages
from acme.client import ClientNetwork, ClientV2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

log = logging.getLogger(__name__)

ORDER_SECONDS = 90.0  # from the new order to the certificate, at most
NETWORK_TIMEOUT = 30  # one HTTP call to the ACME server
USER_AGENT = "gogeta"


class OrderFailed(Exception):
    """Why no certificate came, in words for a log line and /__gogeta/routes."""


def new_account_key() -> str:
    """A PEM (PKCS#8) RSA key for the fleet's account: RS256, which every ACME server takes."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _pem(key)


def new_certificate_key() -> str:
    """A PEM (PKCS#8) P-256 key for one certificate: small, fast handshakes."""
    return _pem(ec.generate_private_key(ec.SECP256R1()))


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


class AcmeClient:
    """The ACME server at `directory_url`, as the account of `account_key` (registered at
    the first order, found again by its key afterwards: one account for the fleet)."""

    def __init__(
        self, directory_url: str, email: str, ca_file: str, account_key: Callable[[], str]
    ) -> None:
        self.directory_url = directory_url
        self.email = email
        self.ca_file = ca_file
        self.account_key = account_key
        self._client: ClientV2 | None = None

    def _connected(self) -> ClientV2:
        if self._client is not None:
            return self._client
        pem = self.account_key().encode("ascii")
        key = jose.jwk.JWKRSA(key=serialization.load_pem_private_key(pem, password=None))
        net = ClientNetwork(key, user_agent=USER_AGENT, timeout=NETWORK_TIMEOUT)
        if self.ca_file:
            # Handed to requests as its `verify`, which takes a CA bundle's path too.
            net.verify_ssl = self.ca_file  # type: ignore[assignment]
        acme = ClientV2(ClientV2.get_directory(self.directory_url, net), net)
        registration = messages.NewRegistration.from_data(
            email=self.email or None, terms_of_service_agreed=True
        )
        try:
            acme.new_account(registration)
            log.info("ACME account registered at %s", self.directory_url)
        except errors.ConflictError as exc:  # the key's account exists: use it
            net.account = messages.RegistrationResource(
                uri=exc.location, body=messages.Registration()
            )
        self._client = acme
        return acme

    def order(
        self,
        name: str,
        publish: Callable[[str, str], None],
        withdraw: Callable[[str], None],
    ) -> tuple[str, str]:
        """(PEM chain, PEM key) of a new certificate for `name`. Raises OrderFailed.

        `publish(token, key_authorization)` must make every gogeta answer the challenge
        before it returns; `withdraw(token)` is called for each once the order is over.
        """
        key = new_certificate_key()
        csr = crypto_util.make_csr(key.encode("ascii"), [name])
        published: list[str] = []
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_SECONDS)
        try:
            acme = self._connected()
            order = acme.new_order(csr)
            for authorization in order.authorizations:
                if authorization.body.status == messages.STATUS_VALID:
                    continue  # validated lately: the server may reuse it
                challenge = next(
                    (
                        c
                        for c in authorization.body.challenges
                        if isinstance(c.chall, challenges.HTTP01)
                    ),
                    None,
                )
                if challenge is None:
                    raise OrderFailed(f"the ACME server offers no http-01 challenge for {name}")
                response, validation = challenge.response_and_validation(acme.net.key)
                token = challenge.chall.encode("token")
                published.append(token)
                publish(token, str(validation))
                acme.answer_challenge(challenge, response)
            done = acme.poll_and_finalize(order, deadline)
        except OrderFailed:
            raise
        except errors.TimeoutError as exc:
            raise OrderFailed(f"no certificate within {ORDER_SECONDS:.0f} s") from exc
        except (errors.Error, jose.errors.Error, requests.RequestException, ValueError) as exc:
            if isinstance(exc, requests.RequestException):
                self._client = None  # the server may be another one when it answers again
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise OrderFailed(text) from exc
        finally:
            for token in published:
                withdraw(token)
        chain = done.fullchain_pem
        if not chain:
            raise OrderFailed("the ACME server gave no certificate")
        return chain, key

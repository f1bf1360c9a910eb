"""Which addresses the backend may connect to on a task's (or a caller's) behalf.

Task image URLs, the redirects they answer with, and Label Studio URLs a caller of /jobs supplies are
untrusted: a request to them must not reach loopback, private (RFC 1918, CG-NAT), link-local (cloud metadata
at 169.254.169.254) or otherwise non-public addresses. Two hosts are trusted wherever they resolve: the
host of LABEL_STUDIO_URL (the operator's Label Studio), and the hosts listed in ALLOWED_IMAGE_HOSTS (a
compose service, an on-premise bucket).

Untrusted URLs go through requests-hardened's IP-filtering session, which resolves the host, checks the
address and connects to exactly that address (no DNS-rebinding gap between the check and the connection).
A refusal reads "refused by policy" and names no address, so errors do not map an internal network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from requests_hardened import Config as HardenedConfig
from requests_hardened.client import HTTPSession
from requests_hardened.ip_filter import InvalidIPAddress

REFUSED = "refused by policy: the address is not public (allow the host with ALLOWED_IMAGE_HOSTS)"


@dataclass(frozen=True)
class AddressPolicy:
    """Hosts trusted on any address; everything else must resolve to a public address."""

    # Exact host names, or "*.example.com" for a domain's subdomains (lower case).
    trusted_hosts: tuple[str, ...] = ()

    @classmethod
    def of(cls, label_studio_url: str | None, allowed_hosts: Sequence[str]) -> AddressPolicy:
        hosts = [h.lower() for h in allowed_hosts]
        if label_studio_url:
            hosts.append((urlsplit(label_studio_url).hostname or "").lower())
        return cls(tuple(h for h in hosts if h))

    def trusts(self, url: str) -> bool:
        host = (urlsplit(url).hostname or "").lower()
        return any(host == p or (p.startswith("*.") and host.endswith(p[1:])) for p in self.trusted_hosts)


def is_refusal(error: BaseException) -> bool:
    """True when `error` (or its cause) is the address filter's refusal."""
    while error is not None:
        if isinstance(error, InvalidIPAddress):
            return True
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return False


class GuardedSessions:
    """Two HTTP sessions: a plain one for trusted hosts, and one that connects only to public addresses."""

    def __init__(self, policy: AddressPolicy, pool_size: int = 4) -> None:
        self.policy = policy
        self._trusted = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(4, pool_size), max_retries=0)
        self._trusted.mount("http://", adapter)
        self._trusted.mount("https://", adapter)
        config = HardenedConfig(
            ip_filter_enable=True,
            ip_filter_allow_loopback_ips=False,
            never_redirect=True,  # every redirect is followed by hand, so each hop is checked
            default_timeout=(5, 20),
        )
        self._public = HTTPSession(config)
        # A proxy from the environment would be the address checked, not the target's: none for untrusted URLs.
        self._public.trust_env = False

    def for_url(self, url: str) -> requests.Session:
        return self._trusted if self.policy.trusts(url) else self._public

    def close(self) -> None:
        self._trusted.close()
        self._public.close()

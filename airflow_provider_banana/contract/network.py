"""
Decide how a request reaches the server: through which proxy, trusting which certificates.

Both halves (``requests`` in the worker, ``aiohttp`` in the triggerer) are handed the one decision
made here, so that they reach a server the same way: neither library reads the environment itself.
The rules, in order of precedence:

* proxy: the connection extra ``proxy`` (a URL, or ``false`` for none); else, unless ``NO_PROXY``
  names the host, ``https_proxy``/``HTTPS_PROXY`` for an https URL or ``http_proxy``/``HTTP_PROXY``
  for an http one (lower case first, as curl and Python's ``urllib`` read them), then
  ``all_proxy``/``ALL_PROXY``;
* CA certificates: the connection extra ``ca_bundle``; else ``REQUESTS_CA_BUNDLE``,
  ``CURL_CA_BUNDLE``, ``SSL_CERT_FILE``; else certifi's bundle;
* ``verify: false`` in the extra turns certificate checks off (and every hook warns).

No I/O here: the environment is passed in as a mapping, and whether a path exists is asked of the
caller's ``exists``.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from airflow_provider_banana.exceptions import BananaConfigError

#: What stands in for a proxy's credentials in every text.
CREDENTIALS_MASK = "***"

#: Where the trusted CA certificates come from when nothing names a bundle.
CERTIFI = "certifi's CA bundle"

#: Environment variables naming a CA bundle, in order of precedence (``requests`` reads the first two).
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")

#: Logged by every hook whose connection turns certificate checks off.
VERIFY_OFF_WARNING = (
    "TLS certificate verification is OFF for Banana connection %s (extra 'verify': false): anyone on "
    "the network path can read and alter its traffic, the API key included. Trust the server's CA "
    "with the extra 'ca_bundle' instead"
)

_PROXY_SCHEMES = ("http", "https")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


@dataclass(frozen=True)
class BananaNetwork:
    """
    How both halves reach one base URL: the proxy, the trusted CAs, whether to verify at all.

    :param proxy: the proxy's URL, credentials included (never shown: see :attr:`proxy_shown`), or
        None to connect directly.
    :param proxy_source: where the proxy came from (``"HTTPS_PROXY"``, ``"the connection extra
        'proxy'"``), for messages.
    :param ca_bundle: the CA bundle to trust (a file or a directory), or None for certifi's.
    :param ca_source: where the CA bundle came from, for messages.
    :param verify: check the server's certificate; False only with the extra ``verify: false``.
    """

    proxy: str | None = field(default=None, repr=False)
    proxy_source: str | None = None
    ca_bundle: str | None = None
    ca_source: str = CERTIFI
    verify: bool = True

    def __repr__(self) -> str:
        return (
            f"BananaNetwork(proxy={self.proxy_shown!r}, proxy_source={self.proxy_source!r}, "
            f"ca_bundle={self.ca_bundle!r}, ca_source={self.ca_source!r}, verify={self.verify!r})"
        )

    @property
    def proxy_shown(self) -> str | None:
        """Return the proxy's URL with any credentials masked: the only form that goes in a text."""
        return None if self.proxy is None else _without_credentials(self.proxy, CREDENTIALS_MASK + "@")

    @property
    def proxy_url(self) -> str | None:
        """Return the proxy's URL without credentials (they travel in :attr:`proxy_authorization`)."""
        return None if self.proxy is None else _without_credentials(self.proxy, "")

    @property
    def proxy_authorization(self) -> str | None:
        """Return the ``Proxy-Authorization`` header the proxy URL's credentials make, if it has any."""
        if self.proxy is None:
            return None
        parts = urlsplit(self.proxy)
        if parts.username is None and parts.password is None:
            return None
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        return "Basic " + base64.b64encode(pair.encode("latin-1", "replace")).decode("ascii")

    @property
    def requests_verify(self) -> bool | str:
        """Return ``requests``' ``verify`` argument: False, the bundle's path, or True for certifi."""
        if not self.verify:
            return False
        return self.ca_bundle or True

    def scrub(self, text: str) -> str:
        """
        Return ``text`` with the proxy's credentials masked, in the forms an HTTP library may quote them.

        :param text: a library's words about a failure.
        """
        if self.proxy is None or "@" not in urlsplit(self.proxy).netloc:
            return text
        parts = urlsplit(self.proxy)
        userinfo = parts.netloc.rpartition("@")[0]
        forms = {userinfo, unquote(userinfo)}
        password = parts.password or ""
        if len(password) >= 3:  # shorter: too likely to be part of an ordinary word
            forms |= {password, unquote(password)}
        authorization = self.proxy_authorization
        if authorization:
            forms.add(authorization.removeprefix("Basic "))
        for form in sorted(forms, key=len, reverse=True):
            if form:
                text = text.replace(form, CREDENTIALS_MASK)
        return text

    def describe(self) -> str:
        """Return how a request goes, in words: ``"through the proxy ... (HTTPS_PROXY), trusting ..."``."""
        route = f"through the proxy {self.proxy_shown} ({self.proxy_source})" if self.proxy else "directly"
        if not self.verify:
            return f"{route}, without checking certificates (extra 'verify': false)"
        return f"{route}, trusting {self.trusted()}"

    def trusted(self) -> str:
        """Return which CA certificates are trusted, in words."""
        if self.ca_bundle is None:
            return CERTIFI
        return f"the CA bundle {self.ca_bundle} ({self.ca_source})"


#: A direct connection trusting certifi: what a connection without network settings gets.
DIRECT = BananaNetwork()


def network_for(
    url: str, extra: Mapping[str, Any], environ: Mapping[str, str], *, exists: Callable[[str], bool]
) -> BananaNetwork:
    """
    Return how requests to ``url`` go, from the connection's extra and the environment.

    :param url: the base URL (Start and Check share its host, so one decision serves both).
    :param extra: the connection's extra: ``proxy``, ``ca_bundle``, ``verify`` (see the module).
    :param environ: the environment (``os.environ``).
    :param exists: tells whether a path exists (``os.path.exists``); the only look at the disk.
    :raises BananaConfigError: an extra of the wrong kind or naming a missing file, or an
        environment variable naming a proxy or a CA bundle that cannot be used; the message names
        the extra or the variable, never a proxy's credentials.
    """
    verify = _verify_from_extra(extra.get("verify"))
    proxy, proxy_source = _proxy_from_extra(extra.get("proxy"))
    if proxy_source is None:
        proxy, proxy_source = proxy_from_environment(url, environ)
    ca_bundle, ca_source = _ca_bundle(extra.get("ca_bundle"), environ, exists)
    return BananaNetwork(
        proxy=proxy, proxy_source=proxy_source, ca_bundle=ca_bundle, ca_source=ca_source, verify=verify
    )


def _verify_from_extra(value: Any) -> bool:
    if value is None:
        return True
    # A connection given as a URI carries only strings in its extra (``?verify=false``).
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    if not isinstance(value, bool):
        raise BananaConfigError(
            f"The connection extra 'verify' must be true or false, got {value!r}; "
            "to trust a private CA, set the extra 'ca_bundle' to its certificate file instead"
        )
    return value


def _proxy_from_extra(value: Any) -> tuple[str | None, str | None]:
    """Return the extra's proxy and its source; a source of None means "the extra does not say"."""
    source = "the connection extra 'proxy'"
    if value is None or value == "":
        return None, None
    if value is False or (isinstance(value, str) and value.strip().lower() in ("false", "none", "direct")):
        return None, "the connection extra 'proxy' (false: no proxy)"
    if not isinstance(value, str):
        raise BananaConfigError(
            f"The connection extra 'proxy' must be a proxy URL or false, got {type(value).__name__}"
        )
    return validate_proxy_url(value, source), source


def validate_proxy_url(value: str, source: str) -> str:
    """
    Return a proxy URL both HTTP libraries can use (``http://`` added when it has no scheme).

    :param value: the URL, as the extra or the environment gave it.
    :param source: the extra or variable it came from, for the message.
    :raises BananaConfigError: not an http(s) URL with a host; the credentials are never echoed.
    """
    url = value.strip()
    if "://" not in url:
        url = "http://" + url  # ``proxy.corp:3128``, as curl and requests read it
    shown = _without_credentials(url, CREDENTIALS_MASK + "@")
    if any(not char.isprintable() or char.isspace() for char in url):
        raise BananaConfigError(f"The proxy from {source} must not contain spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in _PROXY_SCHEMES:
        raise BananaConfigError(
            f"The proxy from {source} must be an http:// or https:// URL, got {shown!r} "
            "(SOCKS proxies are not supported by both halves of the provider)"
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if not parts.hostname or port == 0:
        raise BananaConfigError(f"The proxy from {source} has no valid host name or port: {shown!r}")
    return url


def proxy_from_environment(url: str, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    """
    Return the environment's proxy for ``url`` and the variable it came from, or ``(None, None)``.

    :param url: where the request goes.
    :param environ: the environment.
    :raises BananaConfigError: the variable that applies holds an unusable proxy URL.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    no_proxy, _ = _first(environ, ("no_proxy", "NO_PROXY"))
    if no_proxy and bypasses_proxy(host, port, no_proxy):
        return None, None
    names = [f"{parts.scheme}_proxy"]
    # Under CGI, HTTP_PROXY is the request's own "Proxy:" header (httpoxy), so it is not read there.
    if parts.scheme != "http" or "REQUEST_METHOD" not in environ:
        names.append(f"{parts.scheme.upper()}_PROXY")
    value, name = _first(environ, (*names, "all_proxy", "ALL_PROXY"))
    if not value or name is None:
        return None, None
    return validate_proxy_url(value, f"the environment variable {name}"), name


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """
    Return whether ``NO_PROXY`` sends requests to ``host:port`` directly.

    Entries are separated by commas or spaces: ``*`` (every host), a domain (``corp.example``,
    ``.corp.example`` or ``*.corp.example``: itself and every host under it), an IP address or a
    CIDR range (``10.0.0.0/8``), each optionally with ``:port`` (then only that port).

    :param host: the request's host name or IP address (IPv6 without brackets).
    :param port: the request's port.
    :param no_proxy: the variable's value.
    """
    host = host.lower().strip("[]").rstrip(".")
    address = _ip(host)
    for entry in no_proxy.replace(",", " ").lower().split():
        if entry == "*":
            return True
        name, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = name.lstrip("*").lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [::1]:8080
        name, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
        return name, int(port) if port.isdigit() else None
    if entry.count(":") == 1:  # host:port; several colons are an IPv6 address
        name, _, port = entry.partition(":")
        return name, int(port) if port.isdigit() else None
    return entry, None


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _ca_bundle(value: Any, environ: Mapping[str, str], exists: Callable[[str], bool]) -> tuple[str | None, str]:
    if value is not None and value != "":
        if not isinstance(value, str) or not value.strip():
            raise BananaConfigError(
                f"The connection extra 'ca_bundle' must be the path of a PEM file of CA certificates, got {value!r}"
            )
        if not exists(value.strip()):
            raise BananaConfigError(
                f"The connection extra 'ca_bundle' names {value.strip()!r}, which does not exist on this machine "
                "(the worker's and the triggerer's machines both need it)"
            )
        return value.strip(), "the connection extra 'ca_bundle'"
    path, name = _first(environ, CA_BUNDLE_VARIABLES)
    if path and name:
        if not exists(path):
            raise BananaConfigError(f"The environment variable {name} names {path!r}, which does not exist")
        return path, f"the environment variable {name}"
    return None, CERTIFI


def _first(environ: Mapping[str, str], names: tuple[str, ...] | list[str]) -> tuple[str | None, str | None]:
    # An empty variable counts as unset, as requests, curl and urllib take it.
    for name in names:
        value = environ.get(name)
        if value and value.strip():
            return value.strip(), name
    return None, None


def _without_credentials(url: str, replacement: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = replacement + netloc.rpartition("@")[2]
    return f"{scheme}://{netloc}{slash}{path}"

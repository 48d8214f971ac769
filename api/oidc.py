"""Unified identity login: OpenID Connect against the organisation's identity provider (docs/oidc.md).

Three ways in, one kind of principal out:

- **Browser** (:func:`begin_login`, :func:`complete_login`): the authorization-code flow with PKCE (S256). State,
  nonce and code verifier are kept in the database (``oidc_login_states``: single-use by one conditional UPDATE,
  expiring after :data:`LOGIN_STATE_SECONDS`), bound to the browser by a cookie holding a secret whose hash the row
  keeps, so any API worker can finish a login another began and a callback link sent to someone else fails. The
  callback exchanges the code, validates the ID token (signature, ``iss``, ``aud``/``azp``, ``exp``, ``iat``,
  ``nonce``, ``at_hash``), reads the userinfo, maps the claims to the real-name user (provisioning or updating it),
  keeps the provider's tokens as the account's link (``oidc_links``) and opens a normal session token
  (:func:`api.people.issue_token`), handed to the browser as an HttpOnly, SameSite=Strict cookie
  (:data:`SESSION_COOKIE`).
- **Scripts** (:func:`authenticate_jwt`): ``Authorization: Bearer <JWT access token from the provider>``, validated
  against the provider's JWKS (cached; fetched again for an unknown ``kid``), issuer, audience
  (``settings.oidc_audience``), ``typ`` (RFC 9068), expiry and ``nbf``/``iat``. Each JWT becomes a ``tokens`` row
  of kind ``oidc`` the first time it is seen (its SHA-256, its ``exp``), so revocation, logout, playback tickets and
  the per-user token cut work on it as on any token.
- **Every request of an identity-provider account**, whatever its token (:func:`liveness_due`,
  :func:`check_liveness`): the provider is asked whether the account still exists and is enabled, at most every
  ``settings.oidc_recheck_seconds`` (0: on every request), with the provider's userinfo endpoint and the access
  token of the account's link, renewed with its refresh token when it has expired (one request renews it, the
  others wait for it). A provider that no longer accepts the link's tokens ends the link and every token the user
  has here (:func:`api.people.cut_tokens`, one ``auth.oidc.inactive`` event); a new browser login links it again.

Claim mapping: ``oidc_subject`` is ``<iss>|<sub>`` (an issuer URL cannot hold a raw ``|``); user name, full name,
staff number and unit come from the claims named in settings; roles from the groups claim through
``settings.oidc_role_map`` (:func:`api.users.apply_provider_roles`: no second admin, but separation of duties and
the last-admin rule hold). Signature algorithms: asymmetric ones only (never ``none`` or HMAC), and for ID tokens
only those the provider's discovery document lists. Library: PyJWT (docs/oidc.md says why).

Every browser login is audited: ``auth.oidc.login`` allowed, or denied with the refusal's code once the provider
has said who it is (earlier refusals, such as a stale ``state``, are the API's ordinary denials).
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard, cast
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit, urlunsplit

import httpx
import jwt
from sqlalchemy import CursorResult, Table, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from api import people, users
from api.audit import Actor, Event, RequestMeta, record
from api.people import Principal
from api.roles import ROLES, separation_conflict
from nvr.config import Settings
from nvr.errors import Kind, NvrError
from nvr.models import OidcLink, OidcLoginState, Token, User

if TYPE_CHECKING:
    from fastapi import Request

    from api.context import Services

SESSION_COOKIE = "nvr_session"
"""The browser's session token (HttpOnly, SameSite=Strict, Path=/api/v1) when the server is reached over plain HTTP;
over HTTPS it is :data:`SECURE_SESSION_COOKIE`. The API takes it when no Authorization header comes; a request that
changes something (not GET/HEAD/OPTIONS) must also carry :data:`CSRF_HEADER`."""
SECURE_SESSION_COOKIE = "__Host-nvr_session"
"""Over HTTPS: Secure, Path=/, no Domain, so no other host of the same site (a sibling subdomain) can set or
overwrite it."""
CSRF_HEADER = "x-nvr-csrf"
LOGIN_COOKIE_PREFIX = "nvr_oidc_"
"""One per login begun (``nvr_oidc_<16 hex of the state's hash>``), so two tabs can each finish theirs."""
LOGIN_STATE_SECONDS = 600
MAX_PENDING_PER_ADDR = 30
"""Logins one client address may have begun and not finished within :data:`LOGIN_STATE_SECONDS`."""
LEEWAY_SECONDS = 30
"""Clock skew allowed for ``iat`` and ``nbf`` (``exp`` is exact)."""
METADATA_MAX_AGE_SECONDS = 3600
JWKS_MAX_AGE_SECONDS = 600
JWKS_REFETCH_SECONDS = 5.0
"""An unknown ``kid`` fetches the JWKS again at most this often (a forged ``kid`` must not hammer the provider)."""
HTTP_TIMEOUT_SECONDS = 5.0
RENEW_WAIT_SECONDS = 10.0
MAX_JWT_CHARS = 8192
ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
_KTY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_AT_HASH = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_RETURN_TO = re.compile(r"/(?![/\\])[\x21-\x7e]{0,499}")
PROVIDER = Actor(None, "identity provider", None, None)
"""Who changes a user when the provider's claims change it."""


# --- refusals ----------------------------------------------------------------------------------------------------
def _unauthenticated(code: str, message: str) -> NvrError:
    return NvrError(Kind.UNAUTHENTICATED, code, message)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _plain_text(value: object) -> TypeGuard[str]:
    """Text a database column can hold and a person can read: no control characters, no lone surrogates."""
    if not isinstance(value, str) or _CONTROL.search(value):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _token_invalid(message: str) -> NvrError:
    return _unauthenticated("token_invalid", f"the bearer token is not valid: {message}")


def _unavailable(message: str) -> NvrError:
    return NvrError(Kind.UNAVAILABLE, "oidc_unavailable", f"the identity provider cannot be reached: {message}")


class LoginRefused(NvrError):
    """A browser login refused after the provider said who signs in: its ``auth.oidc.login`` denial is already
    recorded (with the person as actor), so the route answers it without a second denial event."""

    def __init__(self, cause: NvrError) -> None:
        super().__init__(cause.kind, cause.code, cause.message)


# --- the provider: discovery, JWKS, endpoints ----------------------------------------------------------------------
class _Provider:
    """One identity provider as this process knows it: discovery document and JWKS, cached."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False)
        self._meta: dict[str, Any] | None = None
        self._meta_at = -math.inf
        self._keys: list[tuple[dict[str, Any], jwt.PyJWK]] = []
        self._keys_at = -math.inf
        self._refetched_at = -math.inf

    def get(self, url: str, headers: dict[str, str]) -> httpx.Response:
        """A GET, tried once more on a connection the provider closed (a kept-alive one across its restart)."""
        for attempt in (1, 2):
            try:
                return self._http.get(url, headers=headers)
            except (httpx.RemoteProtocolError, httpx.ConnectError) as exc:
                if attempt == 2:
                    raise _unavailable(f"{url}: {exc.__class__.__name__}") from None
            except httpx.HTTPError as exc:
                raise _unavailable(f"{url}: {exc.__class__.__name__}") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._http.close()

    def _get_json(self, url: str) -> dict[str, Any]:
        r = self.get(url, {"accept": "application/json"})
        if r.status_code != 200:
            raise _unavailable(f"{url} answered {r.status_code}")
        try:
            doc = r.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise _unavailable(f"{url} did not answer a JSON object")
        return doc

    def metadata(self) -> dict[str, Any]:
        with self._lock:
            if self._meta is None or time.monotonic() - self._meta_at > METADATA_MAX_AGE_SECONDS:
                doc = self._get_json(self.issuer.rstrip("/") + "/.well-known/openid-configuration")
                if doc.get("issuer") != self.issuer:  # OpenID Connect Discovery 1.0, section 4.3
                    raise _unavailable(f"its discovery document names the issuer {str(doc.get('issuer'))[:200]!r}")
                for name in ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint"):
                    if not isinstance(doc.get(name), str):
                        raise _unavailable(f"its discovery document has no {name}")
                self._meta, self._meta_at = doc, time.monotonic()
            return self._meta

    def _load_keys(self) -> None:
        assert self._meta is not None  # key() read the discovery document first
        doc = self._get_json(self._meta["jwks_uri"])
        keys = []
        for entry in doc.get("keys") or []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                keys.append((entry, jwt.PyJWK(entry)))
            except (jwt.PyJWTError, ValueError, TypeError):
                continue  # a key type this library does not know: it can verify nothing here
        self._keys, self._keys_at = keys, time.monotonic()

    def _find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        kty = _KTY.get(alg[:2])
        fitting = [
            (entry, key)
            for entry, key in self._keys
            if entry.get("kty") == kty and entry.get("alg", alg) == alg and (kid is None or entry.get("kid") == kid)
        ]
        if kid is None and len(fitting) != 1:
            return None  # no kid: only a provider with exactly one fitting key is unambiguous
        return fitting[0][1] if fitting else None

    def key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        self.metadata()
        with self._lock:
            now = time.monotonic()
            if now - self._keys_at > JWKS_MAX_AGE_SECONDS:
                self._load_keys()
            found = self._find(kid, alg)
            if found is None and now - self._refetched_at >= JWKS_REFETCH_SECONDS:
                self._refetched_at = now  # the provider may have rotated its keys
                self._load_keys()
                found = self._find(kid, alg)
        if found is None:
            raise _token_invalid(f"it is signed with a key the provider does not publish (kid {str(kid)[:64]!r})")
        return found

    def post_token(self, settings: Settings, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        headers = {"accept": "application/json"}
        form = {**form}
        client_id = settings.oidc_client_id or ""
        if settings.oidc_client_secret:  # client_secret_basic, RFC 6749 section 2.3.1
            basic = f"{quote_plus(client_id)}:{quote_plus(settings.oidc_client_secret)}".encode()
            headers["authorization"] = "Basic " + base64.b64encode(basic).decode()
        else:
            form["client_id"] = client_id
        url = self.metadata()["token_endpoint"]
        try:
            r = self._http.post(url, data=form, headers=headers)
        except httpx.HTTPError as exc:
            raise _unavailable(f"{url}: {exc.__class__.__name__}") from None
        try:
            body = r.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise _unavailable(f"{url} answered {r.status_code} without a JSON object")
        return r.status_code, body

    def userinfo(self, access_token: str) -> dict[str, Any] | None:
        """The account's claims, or None when the provider refuses the token (401/403: expired, revoked, or the
        account is gone or disabled)."""
        url = self.metadata()["userinfo_endpoint"]
        r = self.get(url, {"authorization": f"Bearer {access_token}", "accept": "application/json"})
        if r.status_code in (401, 403):
            return None
        if r.status_code != 200:
            raise _unavailable(f"{url} answered {r.status_code}")
        try:
            claims = r.json()
        except ValueError:
            claims = None
        if not isinstance(claims, dict):
            raise _unavailable(f"{url} did not answer a JSON object (signed userinfo is not supported)")
        return claims


_providers: dict[str, _Provider] = {}
_providers_lock = threading.Lock()


@atexit.register
def _close_providers() -> None:
    with _providers_lock:
        for p in _providers.values():
            p.close()
        _providers.clear()


def _provider(issuer: str) -> _Provider:
    """The configured provider's cache; a process serves one issuer at a time, so another one's is let go."""
    with _providers_lock:
        p = _providers.get(issuer)
        if p is None:
            for old in _providers.values():
                old.close()
            _providers.clear()
            p = _providers[issuer] = _Provider(issuer)
        return p


def _browser_issuer(settings: Settings) -> str:
    if not (settings.oidc_issuer and settings.oidc_client_id and settings.oidc_redirect_uri):
        raise NvrError(
            Kind.NOT_FOUND,
            "oidc_not_configured",
            "this server has no identity provider configured (oidc_issuer, oidc_client_id, oidc_redirect_uri); "
            "sign in with a local account",
        )
    return settings.oidc_issuer


# --- JWT validation ----------------------------------------------------------------------------------------------
def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _token_invalid(f"its {name!r} claim is not a time")
    return float(value)


def _check_times(claims: dict[str, Any], now_us: int) -> None:
    now = now_us / 1e6
    exp, iat, nbf = _number(claims, "exp"), _number(claims, "iat"), _number(claims, "nbf")
    assert exp is not None and iat is not None  # required by the decoder
    if exp <= now:
        raise _unauthenticated("token_expired", "this token has expired; get a new one from the identity provider")
    if iat > now + LEEWAY_SECONDS or (nbf is not None and nbf > now + LEEWAY_SECONDS):
        raise _unauthenticated("token_not_yet_valid", "this token is not valid yet (iat or nbf is in the future)")


def _verify(
    p: _Provider,
    token: str,
    *,
    audience: str,
    now_us: int,
    algorithms: frozenset[str] = ALGORITHMS,
    types: frozenset[str] | None = None,
) -> dict[str, Any]:
    """The claims of a JWT the provider signed for ``audience``; refusals are 401 with a stable code."""
    if len(token) > MAX_JWT_CHARS:
        raise _token_invalid(f"it is longer than {MAX_JWT_CHARS} characters")
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError):
        raise _token_invalid("it is not a well-formed JWT") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise _token_invalid(f"its algorithm {str(alg)[:20]!r} is not accepted")
    if "crit" in header:
        raise _token_invalid("it has critical header parameters")
    if types is not None:
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in types:
            raise _token_invalid(f"it is not an access token (typ {str(typ)[:40]!r})")
    if unverified.get("iss") != p.issuer:
        raise _unauthenticated(
            "token_issuer_invalid", f"the token was issued by {str(unverified.get('iss'))[:200]!r}, not {p.issuer!r}"
        )
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _token_invalid("its kid is not text")
    key = p.key(kid, alg)
    try:
        claims = jwt.decode(
            token,
            key.key,
            algorithms=[alg],
            audience=audience,
            issuer=p.issuer,
            options={
                "verify_exp": False,  # checked below against the server's clock (Services.now_us)
                "verify_nbf": False,
                "verify_iat": False,
                "require": ["iss", "sub", "aud", "exp", "iat"],
            },
        )
    except jwt.InvalidAudienceError:
        raise _unauthenticated("token_audience_invalid", f"the token is not meant for {audience!r}") from None
    except jwt.InvalidIssuerError:
        raise _unauthenticated("token_issuer_invalid", f"the token was not issued by {p.issuer!r}") from None
    except jwt.MissingRequiredClaimError as exc:
        raise _token_invalid(f"it has no {exc.claim!r} claim") from None
    except (jwt.PyJWTError, ValueError, TypeError):
        raise _token_invalid("its signature does not verify") from None
    _check_times(claims, now_us)
    sub = claims.get("sub")
    if not _plain_text(sub) or not sub or len(sub) > 200:
        raise _token_invalid("its 'sub' claim is not 1-200 characters of text")
    return claims


def _at_hash(access_token: str, alg: str) -> str:
    digest = _AT_HASH.get("512" if alg == "EdDSA" else alg[2:], hashlib.sha256)(access_token.encode()).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()


def _verify_id_token(
    p: _Provider, settings: Settings, id_token: str, nonce: str, access_token: str, now_us: int
) -> dict[str, Any]:
    client_id = settings.oidc_client_id or ""
    offered = p.metadata().get("id_token_signing_alg_values_supported")
    algorithms = ALGORITHMS.intersection(offered) if isinstance(offered, list) else ALGORITHMS
    try:
        claims = _verify(p, id_token, audience=client_id, now_us=now_us, algorithms=frozenset(algorithms))
    except NvrError as exc:
        raise _unauthenticated("oidc_id_token_invalid", f"the provider's ID token is refused ({exc.message})") from None
    aud = claims["aud"]
    if ((isinstance(aud, list) and len(aud) > 1) or "azp" in claims) and claims.get("azp") != client_id:
        raise _unauthenticated("oidc_id_token_invalid", "the ID token was issued to another client (azp)")
    if not hmac.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
        raise _unauthenticated("oidc_id_token_invalid", "the ID token's nonce is not this login's")
    at_hash = claims.get("at_hash")
    if at_hash is not None:
        alg = jwt.get_unverified_header(id_token)["alg"]
        if not hmac.compare_digest(str(at_hash).encode(), _at_hash(access_token, alg).encode()):
            raise _unauthenticated("oidc_id_token_invalid", "the ID token's at_hash does not match the access token")
    return claims


# --- claims -> the real-name user ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """A provider account as this server maps it."""

    subject: str
    """``<iss>|<sub>``: what ``users.oidc_subject`` holds."""
    username: str
    full_name: str
    staff_number: str
    unit: str
    roles: tuple[str, ...]


def _claims_refused(message: str) -> NvrError:
    return NvrError(Kind.PERMISSION_DENIED, "oidc_claims_invalid", message)


def map_claims(settings: Settings, issuer: str, claims: dict[str, Any]) -> Identity:
    """The user this provider account is here; 403 ``oidc_claims_invalid`` / ``oidc_no_role`` when its claims do
    not make one."""

    def text(claim: str, what: str, limit: int) -> str:
        value = claims.get(claim)
        if not _plain_text(value) or not value.strip() or len(value.strip()) > limit:
            raise _claims_refused(f"the provider's {claim!r} claim ({what}) is missing or not 1-{limit} characters")
        return value.strip()

    sub = claims.get("sub")
    subject = f"{issuer}|{sub}"
    if not _plain_text(sub) or not sub or len(subject) > 255:
        raise _claims_refused("the provider's 'sub' claim is missing or too long")
    username = text(settings.oidc_username_claim, "user name", 64).lower()
    if not people.USERNAME.fullmatch(username):
        raise _claims_refused(
            f"the provider's {settings.oidc_username_claim!r} claim is not a user name here (1-64 lowercase letters, "
            "digits, '.', '_' or '-', starting with a letter or digit)"
        )
    raw = claims.get(settings.oidc_roles_claim)
    groups = [raw] if isinstance(raw, str) else [g for g in raw if isinstance(g, str)] if isinstance(raw, list) else []
    mapped = {settings.oidc_role_map[g] for g in groups if g in settings.oidc_role_map}
    unknown = sorted(r for r in mapped if r not in ROLES)
    if unknown:
        raise NvrError(
            Kind.PERMISSION_DENIED, "role_invalid", f"oidc_role_map names roles that do not exist: {', '.join(unknown)}"
        )
    if not mapped:
        raise NvrError(
            Kind.PERMISSION_DENIED,
            "oidc_no_role",
            f"none of your groups at the identity provider ({settings.oidc_roles_claim!r}) gives a role here",
        )
    return Identity(
        subject=subject,
        username=username,
        full_name=text(settings.oidc_name_claim, "full name", 200),
        staff_number=text(settings.oidc_staff_number_claim, "staff number", 64),
        unit=text(settings.oidc_unit_claim, "unit", 200),
        roles=tuple(r for r in ROLES if r in mapped),
    )


def _separation(roles: tuple[str, ...]) -> None:
    clash = separation_conflict(roles)
    if clash is not None:
        raise NvrError(
            Kind.PERMISSION_DENIED,
            "role_conflict",
            f"the identity provider gives you admin and {clash}: separation of duties forbids holding both",
        )


def _taken(s: Session, column: Any, value: str, user_id: int | None) -> bool:
    q = select(User.id).where(column == value)
    if user_id is not None:
        q = q.where(User.id != user_id)
    return s.scalar(q) is not None


def sync_user(s: Session, ident: Identity, now_us: int, meta: RequestMeta) -> User:
    """Provision or update the local user of a provider account: no password here, roles as the provider's groups
    map them (no second admin: the provider is the source of truth; separation of duties still holds)."""
    _separation(ident.roles)
    u = s.scalar(select(User).where(User.oidc_subject == ident.subject))
    if u is None:
        if _taken(s, User.username, ident.username, None):
            raise NvrError(Kind.CONFLICT, "user_exists", f"a local account is named {ident.username!r} already")
        if _taken(s, User.staff_number, ident.staff_number, None):
            raise NvrError(
                Kind.CONFLICT, "staff_number_exists", f"staff number {ident.staff_number!r} belongs to another account"
            )
        u = people.new_user(
            username=ident.username,
            full_name=ident.full_name,
            staff_number=ident.staff_number,
            unit=ident.unit,
            roles=list(ident.roles),
            now_us=now_us,
        )
        u.auth_source = people.OIDC
        u.oidc_subject = ident.subject
        people.add_user(s, u)
        record(
            s,
            now_us,
            PROVIDER,
            meta,
            Event("user.create", "ok", object_id=f"user:{u.id}", reason=f"roles={u.roles}; from the identity provider"),
        )
        return u
    if people.has_local_password(u):  # only a row edited by hand: a local account never takes a subject
        raise NvrError(Kind.CONFLICT, "oidc_subject_conflict", "a local account holds this provider account's subject")
    if u.state != "active":
        raise _unauthenticated("user_disabled", "this account is disabled here")
    changed = []
    for attr, value in (
        ("username", ident.username),
        ("full_name", ident.full_name),
        ("staff_number", ident.staff_number),
        ("unit", ident.unit),
    ):
        if getattr(u, attr) != value:
            if attr == "username" and _taken(s, User.username, value, u.id):
                raise NvrError(Kind.CONFLICT, "user_exists", f"another account is named {value!r} already")
            if attr == "staff_number" and _taken(s, User.staff_number, value, u.id):
                raise NvrError(
                    Kind.CONFLICT, "staff_number_exists", f"staff number {value!r} belongs to another account"
                )
            changed.append(f"{attr}={value}")
            setattr(u, attr, value)
    if changed:
        u.updated_us = now_us
        s.flush()
        reason = "; ".join(changed) + "; from the identity provider"
        record(s, now_us, PROVIDER, meta, Event("user.update", "ok", object_id=f"user:{u.id}", reason=reason))
    try:
        users.apply_provider_roles(s, u, list(ident.roles), now_us, PROVIDER, meta)
    except NvrError as exc:
        if exc.kind is Kind.INVALID_ARGUMENT:  # role_conflict / role_invalid: the provider's, not the caller's input
            raise NvrError(Kind.PERMISSION_DENIED, exc.code, exc.message) from None
        raise
    return u


# --- the browser flow ------------------------------------------------------------------------------------------
def _rows(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount or 0)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def login_cookie_name(state: str) -> str:
    return LOGIN_COOKIE_PREFIX + _hash(state)[:16]


def cookies_secure(settings: Settings) -> bool:
    """Cookies get ``Secure`` when the server is reached over HTTPS (its callback URL says so)."""
    return (settings.oidc_redirect_uri or "").lower().startswith("https://")


def session_cookie_name(settings: Settings) -> tuple[str, str]:
    """The session cookie's name and path: ``__Host-nvr_session`` on ``/`` over HTTPS, else ``nvr_session`` on
    ``/api/v1``."""
    return (SECURE_SESSION_COOKIE, "/") if cookies_secure(settings) else (SESSION_COOKIE, "/api/v1")


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass(frozen=True)
class LoginStart:
    redirect_to: str
    """The provider's authorization URL."""
    cookie_name: str
    cookie_value: str
    """The browser-binding secret; the state row keeps only its hash."""


def begin_login(svc: Services, meta: RequestMeta, return_to: str | None) -> LoginStart:
    """Begin a browser login: a state row (single-use, expiring) and the provider's authorization URL."""
    settings = svc.settings
    issuer = _browser_issuer(settings)
    if return_to is not None and not _RETURN_TO.fullmatch(return_to):
        raise NvrError(
            Kind.INVALID_ARGUMENT, "return_to_invalid", "return_to must be a path on this server, like /console/"
        )
    authorize = _provider(issuer).metadata()["authorization_endpoint"]
    state, nonce, browser = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    now = svc.now_us()
    addr = (meta.client_addr or "")[:64]
    with svc.db.session() as s:
        s.execute(delete(OidcLoginState).where(OidcLoginState.expires_us <= now))
        pending = s.scalar(
            select(func.count())
            .select_from(OidcLoginState)
            .where(OidcLoginState.client_addr == addr, OidcLoginState.used_us.is_(None))
        )
        if (pending or 0) >= MAX_PENDING_PER_ADDR:
            raise NvrError(
                Kind.RESOURCE_EXHAUSTED,
                "oidc_logins_pending",
                f"{MAX_PENDING_PER_ADDR} sign-ins from this address are still pending; finish one or wait",
            )
        s.add(
            OidcLoginState(
                state_hash=_hash(state),
                browser_hash=_hash(browser),
                nonce=nonce,
                code_verifier=verifier,
                return_to=return_to,
                client_addr=addr,
                created_us=now,
                expires_us=now + LOGIN_STATE_SECONDS * 1_000_000,
            )
        )
    scopes = ["openid", *(sc for sc in settings.oidc_scopes if sc != "openid")]
    params = {
        "response_type": "code",
        "client_id": settings.oidc_client_id or "",
        "redirect_uri": settings.oidc_redirect_uri or "",
        "scope": " ".join(scopes),
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if "offline_access" in scopes:
        params["prompt"] = "consent"  # OpenID Connect Core 1.0, section 11
    return LoginStart(_with_query(authorize, params), login_cookie_name(state), browser)


@dataclass(frozen=True)
class LoginDone:
    user: User
    token: Token
    secret: str
    return_to: str | None


def _take_state(svc: Services, state: str | None, browser: str | None) -> OidcLoginState:
    """Consume the login's state row (one conditional UPDATE: a second callback with it finds nothing)."""
    refused = _unauthenticated(
        "oidc_state_invalid", "this sign-in link is unknown, used, expired or from another browser; sign in again"
    )
    if not state or not browser or len(state) > 200 or len(browser) > 200:
        raise refused
    now = svc.now_us()
    with svc.db.session() as s:
        taken = s.execute(
            update(OidcLoginState)
            .where(
                OidcLoginState.state_hash == _hash(state),
                OidcLoginState.browser_hash == _hash(browser),
                OidcLoginState.used_us.is_(None),
                OidcLoginState.expires_us > now,
            )
            .values(used_us=now)
            .execution_options(synchronize_session=False)
        )
        if _rows(taken) != 1:
            raise refused
        row = s.scalar(select(OidcLoginState).where(OidcLoginState.state_hash == _hash(state)))
        assert row is not None
        return row


def _upsert_link(s: Session, values: dict[str, Any]) -> None:
    table = cast(Table, OidcLink.__table__)
    insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(table).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.user_id], set_={k: v for k, v in values.items() if k != "user_id"}
    )
    s.execute(stmt)


def _expires_us(now_us: int, tokens: dict[str, Any]) -> int | None:
    expires_in = tokens.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or not 0 < expires_in < 10**8:
        return None
    return now_us + int(expires_in * 1_000_000)


def complete_login(svc: Services, meta: RequestMeta, params: dict[str, str | None], browser: str | None) -> LoginDone:
    """Finish a browser login at the callback: state, code exchange, ID token, userinfo, the user, a session."""
    settings = svc.settings
    issuer = _browser_issuer(settings)
    p = _provider(issuer)
    row = _take_state(svc, params.get("state"), browser)
    if params.get("error"):
        error = re.sub(r"[^A-Za-z0-9_.-]", "", params["error"] or "")[:64]
        raise _unauthenticated("oidc_login_refused", f"the identity provider did not sign you in ({error})")
    iss = params.get("iss")
    if (iss is not None or p.metadata().get("authorization_response_iss_parameter_supported")) and iss != issuer:
        raise _unauthenticated("oidc_issuer_mismatch", "the answer did not come from the configured provider (iss)")
    code = params.get("code")
    if not code:
        raise _unauthenticated("oidc_code_invalid", "the identity provider sent no authorization code")
    status, tokens = p.post_token(
        settings,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": settings.oidc_redirect_uri or "",
            "code_verifier": row.code_verifier,
        },
    )
    if status != 200:
        if status >= 500:
            raise _unavailable(f"its token endpoint answered {status}")
        error = re.sub(r"[^A-Za-z0-9_.-]", "", str(tokens.get("error", "")))[:64]
        raise _unauthenticated("oidc_code_invalid", f"the identity provider refused the authorization code ({error})")
    access_token, id_token = tokens.get("access_token"), tokens.get("id_token")
    if not isinstance(access_token, str) or not isinstance(id_token, str) or not access_token:
        raise _unauthenticated("oidc_code_invalid", "the identity provider's answer has no ID token or access token")
    refresh_token = tokens.get("refresh_token") if isinstance(tokens.get("refresh_token"), str) else None
    now = svc.now_us()
    id_claims = _verify_id_token(p, settings, id_token, row.nonce, access_token, now)
    info = p.userinfo(access_token)
    if info is None or info.get("sub") != id_claims["sub"]:
        raise _unauthenticated("oidc_userinfo_invalid", "the provider's userinfo does not answer for this account")
    claims = {**id_claims, **info}
    ident = Identity(f"{issuer}|{id_claims['sub']}", "", "", "", "", ())
    try:
        ident = map_claims(settings, issuer, claims)
        with svc.db.session() as s:
            u = sync_user(s, ident, now, meta)
            _upsert_link(
                s,
                {
                    "user_id": u.id,
                    "subject": ident.subject,
                    "access_token": access_token,
                    "access_expires_us": _expires_us(now, tokens),
                    "refresh_token": refresh_token,
                    "linked_us": now,
                    "checked_us": now,
                    "refreshing_us": None,
                    "state": "live",
                    "state_reason": None,
                },
            )
            token, secret = people.issue_token(
                s, u, "session", None, now_us=now, expires_us=now + int(settings.session_hours * 3600e6)
            )
            record(
                s,
                now,
                people.user_actor(u),
                meta,
                Event("auth.oidc.login", "allowed", object_id=f"token:{token.id}", reason=f"subject={ident.subject}"),
            )
            return LoginDone(u, token, secret, row.return_to)
    except NvrError as exc:
        _record_refusal(svc, ident, claims, exc, meta)
        raise LoginRefused(exc) from None


def _record_refusal(svc: Services, ident: Identity, claims: dict[str, Any], exc: NvrError, meta: RequestMeta) -> None:
    with svc.db.session() as s:
        u = s.scalar(select(User).where(User.oidc_subject == ident.subject))
        if u is not None:
            actor = people.user_actor(u)
        else:
            name, username, unit = (
                _CONTROL.sub("", str(claims.get(c, ""))).encode("utf-8", "replace").decode()
                for c in (svc.settings.oidc_name_claim, svc.settings.oidc_username_claim, svc.settings.oidc_unit_claim)
            )
            actor = Actor(
                None, f"{name[:100]} ({username[:64]})" if name or username else None, unit[:200] or None, None
            )
        ev = Event("auth.oidc.login", "denied", object_id=f"oidc:{ident.subject}"[:200], reason=exc.code)
        record(s, svc.now_us(), actor, meta, ev)


# --- scripts: the provider's JWT access tokens ------------------------------------------------------------------
def is_jwt(secret: str) -> bool:
    """Whether a bearer secret is a JWT (three base64url parts) rather than one of this server's tokens."""
    return secret.count(".") == 2 and not secret.startswith(tuple(people.TOKEN_PREFIX.values()))


def _insert_token(s: Session, values: dict[str, Any]) -> bool:
    table = cast(Table, Token.__table__)
    insert = postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(table).values(**values).on_conflict_do_nothing(index_elements=[table.c.secret_hash])
    return s.execute(stmt.returning(table.c.id)).first() is not None  # (PostgreSQL's rowcount is -1 here)


def authenticate_jwt(svc: Services, token: str, meta: RequestMeta) -> tuple[Principal, LivenessDue | None]:
    """The principal behind a provider's JWT access token (and the account's liveness check, if one is due)."""
    settings = svc.settings
    if not settings.oidc_issuer or not settings.oidc_audience:
        raise _token_invalid("this server accepts no identity-provider tokens (oidc_issuer, oidc_audience unset)")
    p = _provider(settings.oidc_issuer)
    now = svc.now_us()
    types = frozenset(t.lower() for t in settings.oidc_access_token_types) or None
    claims = _verify(p, token, audience=settings.oidc_audience, now_us=now, types=types)
    client_id = claims.get("client_id", claims.get("azp"))
    if client_id is not None and claims["sub"] == client_id:
        raise _token_invalid("it stands for a client, not a person (client credentials)")
    subject = f"{settings.oidc_issuer}|{claims['sub']}"
    with svc.db.session() as s:
        u = s.scalar(select(User).where(User.oidc_subject == subject))
        if u is None or people.has_local_password(u):
            raise _unauthenticated(
                "oidc_account_unlinked",
                "this provider account has not signed in here yet: sign in once through the browser "
                "(GET /api/v1/auth/oidc/login) so that this server can check it at the provider",
            )
        digest = people.hash_secret(token)
        inserted = _insert_token(
            s,
            {
                "user_id": u.id,
                "kind": "oidc",
                "name": f"identity-provider access token ({str(client_id)[:100]})",
                "secret_hash": digest,
                "created_us": now,
                "expires_us": min(int(claims["exp"] * 1_000_000), now + 366 * people.US_PER_DAY),
                "revoked_us": None,
            },
        )
        t = s.scalar(select(Token).where(Token.secret_hash == digest))
        if t is None or t.user_id != u.id:
            raise _token_invalid("it is not this account's")
        principal = people.principal_for(s, t, now)
        if inserted:
            record(s, now, principal.actor, meta, Event("auth.oidc.token", "allowed", object_id=f"token:{t.id}"))
        due = liveness_due(s, settings, principal.user_id, now)
    return principal, due


# --- the account's liveness at the provider ----------------------------------------------------------------------
@dataclass(frozen=True)
class LivenessDue:
    user_id: int
    subject: str
    sub: str
    access_token: str
    refresh_token: str | None
    linked_us: int


def _unverifiable(message: str) -> NvrError:
    return _unauthenticated("oidc_account_unverifiable", message)


def _inactive(reason: str | None) -> NvrError:
    return _unauthenticated(
        "oidc_account_inactive",
        f"the identity provider no longer vouches for this account ({reason or 'refused'}); sign in again",
    )


def liveness_due(s: Session, settings: Settings, user_id: int, now_us: int) -> LivenessDue | None:
    """None for a local account or one the provider vouched for within ``oidc_recheck_seconds``; else what
    :func:`check_liveness` needs (called in the session that authenticated the token: the user row is loaded)."""
    u = s.get(User, user_id)
    if u is None or people.has_local_password(u):
        return None
    issuer = settings.oidc_issuer
    if not issuer or not settings.oidc_client_id:
        raise _unverifiable("this server has no identity provider configured to check this account with")
    if not (u.oidc_subject or "").startswith(issuer + "|"):
        raise _unverifiable("this account belongs to another identity provider than the one configured")
    link = s.get(OidcLink, user_id)
    if link is None or link.subject != u.oidc_subject:
        raise _unverifiable(
            "this server cannot check the account at the provider: sign in through the browser "
            "(GET /api/v1/auth/oidc/login)"
        )
    if link.state != "live":
        raise _inactive(link.state_reason)
    recheck_us = settings.oidc_recheck_seconds * 1_000_000
    if recheck_us > 0 and link.checked_us is not None and 0 <= now_us - link.checked_us < recheck_us:
        return None
    sub = link.subject[len(issuer) + 1 :]
    return LivenessDue(user_id, link.subject, sub, link.access_token, link.refresh_token, link.linked_us)


def _release(svc: Services, due: LivenessDue, claimed_us: int) -> None:
    with svc.db.session() as s:
        s.execute(
            update(OidcLink)
            .where(OidcLink.user_id == due.user_id, OidcLink.refreshing_us == claimed_us)
            .values(refreshing_us=None)
            .execution_options(synchronize_session=False)
        )


def _renew(svc: Services, p: _Provider, due: LivenessDue) -> dict[str, Any] | None:
    """The account's claims through a renewed access token, or None when the provider refuses the refresh token.
    One request renews (a conditional UPDATE claims it): a refresh token the provider rotates must not be used
    twice, or the provider revokes the whole grant."""
    claimed = svc.now_us()
    with svc.db.session() as s:
        won = _rows(
            s.execute(
                update(OidcLink)
                .where(
                    OidcLink.user_id == due.user_id,
                    OidcLink.linked_us == due.linked_us,
                    OidcLink.state == "live",
                    OidcLink.access_token == due.access_token,
                    or_(OidcLink.refreshing_us.is_(None), OidcLink.refreshing_us < claimed - 30_000_000),
                )
                .values(refreshing_us=claimed)
                .execution_options(synchronize_session=False)
            )
        )
    if not won:
        deadline = time.monotonic() + RENEW_WAIT_SECONDS
        while time.monotonic() < deadline:
            with svc.db.session() as s:
                link = s.get(OidcLink, due.user_id)
                if link is None or link.state != "live" or link.linked_us != due.linked_us:
                    return None
                current, renewing = link.access_token, link.refreshing_us
            if current != due.access_token:
                return p.userinfo(current)
            if renewing is None:
                raise _unavailable("renewing the account's access token failed")
            time.sleep(0.05)
        raise _unavailable("renewing the account's access token takes too long")
    if due.refresh_token is None:
        return None  # the caller ends the link (which also drops the claim); waiting requests see it dead
    try:
        status, tokens = p.post_token(svc.settings, {"grant_type": "refresh_token", "refresh_token": due.refresh_token})
        if status >= 500:
            raise _unavailable(f"its token endpoint answered {status}")
    except NvrError:
        _release(svc, due, claimed)
        raise
    if status != 200 and tokens.get("error") != "invalid_grant":
        # Not about the account (invalid_client: this server's own configuration, say): no reason to end the link.
        _release(svc, due, claimed)
        error = re.sub(r"[^A-Za-z0-9_.-]", "", str(tokens.get("error", "")))[:64]
        raise _unavailable(f"its token endpoint refused to renew the account's token ({error or status})")
    access_token = tokens.get("access_token")
    if status != 200 or not isinstance(access_token, str) or not access_token:
        return None  # invalid_grant: the refresh token or its grant is gone; the caller ends the link
    refresh_token = tokens.get("refresh_token")
    with svc.db.session() as s:
        s.execute(
            update(OidcLink)
            .where(OidcLink.user_id == due.user_id, OidcLink.refreshing_us == claimed)
            .values(
                access_token=access_token,
                access_expires_us=_expires_us(svc.now_us(), tokens),
                refresh_token=refresh_token if isinstance(refresh_token, str) else due.refresh_token,
                refreshing_us=None,
            )
            .execution_options(synchronize_session=False)
        )
    return p.userinfo(access_token)


def _end_link(svc: Services, due: LivenessDue, reason: str, meta: RequestMeta) -> None:
    """The provider no longer vouches for the account: end the link and every token the user has here."""
    now = svc.now_us()
    with svc.db.session() as s:
        ended = _rows(
            s.execute(
                update(OidcLink)
                .where(OidcLink.user_id == due.user_id, OidcLink.linked_us == due.linked_us, OidcLink.state == "live")
                .values(state="dead", state_reason=reason, refreshing_us=None)
                .execution_options(synchronize_session=False)
            )
        )
        if ended:
            u = s.get(User, due.user_id)
            assert u is not None
            people.cut_tokens(s, u, now)
            record(s, now, PROVIDER, meta, Event("auth.oidc.inactive", "ok", object_id=f"user:{u.id}", reason=reason))


def check_liveness(svc: Services, due: LivenessDue | None, meta: RequestMeta) -> None:
    """Ask the provider whether the account still exists and is enabled; refuse the request (401
    ``oidc_account_inactive``) if not. Its current claims update the user (roles included)."""
    if due is None:
        return
    settings = svc.settings
    issuer = settings.oidc_issuer
    assert issuer is not None  # liveness_due checked it
    p = _provider(issuer)
    claims = p.userinfo(due.access_token)
    if claims is None:
        claims = _renew(svc, p, due)
    if claims is None:
        reason = "the provider refuses the account's tokens: removed, disabled, or its grant revoked"
        _end_link(svc, due, reason, meta)
        raise _inactive(reason)
    if claims.get("sub") != due.sub:
        reason = "the provider's userinfo answered for another account"
        _end_link(svc, due, reason, meta)
        raise _inactive(reason)
    ident = map_claims(settings, issuer, claims)
    now = svc.now_us()
    with svc.db.session() as s:
        sync_user(s, ident, now, meta)
        s.execute(
            update(OidcLink)
            .where(OidcLink.user_id == due.user_id, OidcLink.linked_us == due.linked_us, OidcLink.state == "live")
            .values(checked_us=now)
            .execution_options(synchronize_session=False)
        )


# --- the browser's session cookie ----------------------------------------------------------------------------
def session_cookie(request: Request) -> str | None:
    """The session cookie's token when the request has no Authorization header (the header wins); a request that
    changes something must carry :data:`CSRF_HEADER` too (403 ``csrf_header_required``): SameSite=Strict keeps
    other sites' requests from carrying the cookie, the header keeps out forms of sibling sites on the same site."""
    if "authorization" in request.headers:
        return None
    value = request.cookies.get(session_cookie_name(request.app.state.services.settings)[0])
    if not value:
        return None
    if request.method not in _SAFE_METHODS and not request.headers.get(CSRF_HEADER):
        raise NvrError(
            Kind.PERMISSION_DENIED,
            "csrf_header_required",
            f"a request authenticated by the session cookie that changes something must carry the {CSRF_HEADER} header",
        )
    return value

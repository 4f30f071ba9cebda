"""HTTP surface: Spring Cloud Config Server's endpoints, errors as RFC 9457 ``application/problem+json``."""

from __future__ import annotations

import hmac
import logging
import os
import urllib.parse
from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator, Callable

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from msa_kit.bodies import BodyLimit
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from msa_config_server import environment as env
from msa_config_server.bus import BusPublisher, BusUnavailableError
from msa_config_server.crypto import DecryptionError, TextEncryptor, decrypt_environment
from msa_config_server.repository import NoSuchLabelError, Repository, RepositoryError, open_repository

__all__ = ["create_app", "Problem"]

log = logging.getLogger("msa_config_server")
DOCUMENT_TYPES = {".yml": "text/plain", ".yaml": "text/plain", ".json": "application/json",
                  ".properties": "text/plain"}  # Spring serves yml/properties as text/plain


class Problem(Exception):
    def __init__(self, status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.slug, self.title, self.detail, self.headers = status, slug, title, detail, headers


def problem_response(status: int, slug: str, title: str, detail: str, instance: str | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": f"/problems/{slug}", "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


def _label(label: str | None) -> str | None:
    # Spring's convention: a '/' in a branch name (feature/x) is written "(_)" in the URL.
    return label.replace("(_)", "/") if label else None


def create_app(
    repo_path: str | os.PathLike[str],
    *,
    encrypt_key: str | None = None,
    encrypt_salt: str = "deadbeef",
    admin_token: str | None = None,
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/",
    namespace: str = "",
    bus: BusPublisher | None = None,
    max_body_bytes: int = 1_048_576,
) -> FastAPI:
    """The config server over ``repo_path`` (a directory, or a git repository/sub-directory of one)."""
    repository: Repository = open_repository(repo_path)
    encryptor = TextEncryptor(encrypt_key, encrypt_salt) if encrypt_key else None
    publisher = bus or BusPublisher(amqp_url, f"{namespace}msa.bus")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log.info("serving config from %s (%s backend)", repo_path, "git" if repository.is_git else "native")
        yield
        await publisher.close()

    app = FastAPI(title="msa-sandbox config server", description="The Spring Cloud Config Server API.",
                  lifespan=lifespan)
    app.state.repository, app.state.bus = repository, publisher
    app.add_middleware(BodyLimit, limit=lambda: max_body_bytes)  # /encrypt, /decrypt, busrefresh: small bodies

    # --- errors: always problem+json, never a bare 500 for something the client or the repo got wrong ------

    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> Response:
        return problem_response(exc.status, exc.slug, exc.title, exc.detail, request.url.path, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        title = "Not Found" if exc.status_code == 404 else str(exc.detail)
        detail = f"no resource at {request.method} {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return problem_response(exc.status_code, "http-" + str(exc.status_code), title, detail, request.url.path,
                                getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return problem_response(400, "invalid-request", "Invalid request", detail, request.url.path)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal-error", "Internal error",
                                f"unexpected {type(exc).__name__}; see the config server's log", request.url.path)

    # --- reading config --------------------------------------------------------------------------------------

    def environment(application: str, profiles: str, label: str | None) -> dict[str, Any]:
        try:
            document = env.build_environment(repository, application, profiles, label)
        except env.InvalidRequestError as exc:
            raise Problem(400, "invalid-name", "Invalid application or profile", str(exc)) from exc
        except NoSuchLabelError as exc:
            raise Problem(404, "no-such-label", "No such label", str(exc)) from exc
        except env.BrokenFileError as exc:
            # Refuse rather than skip: a client silently missing half its config is worse than a clear error.
            raise Problem(500, "broken-config-file", "Broken configuration file", str(exc)) from exc
        except RepositoryError as exc:
            raise Problem(500, "repository-error", "Cannot read the config repository", str(exc)) from exc
        return decrypt_environment(document, encryptor)

    def document(name_and_profiles: str, label: str | None, resolve: bool) -> Response:
        stem, ext = os.path.splitext(name_and_profiles)
        # Spring splits "{name}-{profiles}" at the last '-': "api-gateway-dev.yml" is api-gateway in dev.
        application, dash, profiles = stem.rpartition("-")
        if not dash or not application or not profiles:
            raise Problem(404, "no-such-document", "No such document",
                          f"{name_and_profiles!r} is not of the form {{application}}-{{profiles}}{ext}")
        flat = env.merge_sources(environment(application, profiles, _label(label)))
        if resolve:
            flat = env.resolve_placeholders(flat)
        render: Callable[[dict[str, Any]], str] = {
            ".properties": env.render_properties, ".json": env.render_json,
        }.get(ext, env.render_yaml)
        return Response(render(flat), media_type=DOCUMENT_TYPES[ext])

    @app.get("/health", tags=["ops"])
    @app.get("/actuator/health", tags=["ops"], include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "UP"}

    # --- encryption: keep these behind a token; they turn anyone into a decryption oracle ----------------------

    def require_admin(authorization: str | None) -> None:
        if not admin_token:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), admin_token.encode()):
            raise Problem(401, "unauthorized", "Unauthorized", "this endpoint needs 'Authorization: Bearer <token>'",
                          headers={"WWW-Authenticate": "Bearer"})

    def require_key() -> TextEncryptor:
        if encryptor is None:
            raise Problem(404, "no-encryption-key", "No encryption key",
                          "no key was installed for the encryption service: set ENCRYPT_KEY and restart")
        return encryptor

    async def request_text(request: Request) -> str:
        text = (await request.body()).decode("utf-8", errors="strict")
        # `curl -d secret` sends a form body: Spring undoes the form encoding, and so do we.
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            if text.endswith("="):
                text = text[:-1]
            text = urllib.parse.unquote_plus(text)
        return text

    @app.get("/encrypt/status", tags=["encryption"])
    async def encrypt_status(authorization: Annotated[str | None, Header()] = None) -> dict[str, str]:
        require_admin(authorization)
        require_key()
        return {"status": "OK"}

    @app.post("/encrypt", tags=["encryption"], response_class=PlainTextResponse)
    async def encrypt(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
        require_admin(authorization)
        key = require_key()
        try:
            plaintext = await request_text(request)
        except UnicodeDecodeError as exc:
            raise Problem(400, "invalid-body", "Invalid body", "the body must be UTF-8 text") from exc
        return key.encrypt(plaintext)

    @app.post("/decrypt", tags=["encryption"], response_class=PlainTextResponse)
    async def decrypt(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
        require_admin(authorization)
        key = require_key()
        try:
            return key.decrypt(await request_text(request))
        except (DecryptionError, UnicodeDecodeError) as exc:
            raise Problem(400, "cannot-decrypt", "Cannot decrypt",
                          "the body is not a ciphertext made with this server's key") from exc

    # --- the bus ---------------------------------------------------------------------------------------------

    async def busrefresh(destination: str | None) -> Response:
        try:
            event = await publisher.publish_refresh(destination)
        except BusUnavailableError as exc:
            raise Problem(503, "bus-unavailable", "Bus unavailable", f"refresh event not sent: {exc}") from exc
        log.info("refresh event %s sent to %s", event["id"], event["destinationService"])
        return Response(status_code=204)

    @app.post("/actuator/busrefresh", tags=["bus"], status_code=204)
    async def busrefresh_all() -> Response:
        return await busrefresh(None)

    @app.post("/actuator/busrefresh/{destination}", tags=["bus"], status_code=204)
    async def busrefresh_one(destination: str) -> Response:
        return await busrefresh(destination)

    # --- Spring's resource paths, last: they match almost anything -------------------------------------------

    @app.get("/{document_name}", tags=["config"])
    async def unlabelled_document(document_name: str, resolvePlaceholders: bool = True) -> Response:
        if os.path.splitext(document_name)[1] not in DOCUMENT_TYPES:
            raise Problem(404, "no-such-document", "No such document",
                          "use /{application}/{profiles} or /{application}-{profiles}.yml|.json|.properties")
        return await run_in_threadpool(document, document_name, None, resolvePlaceholders)

    @app.get("/{application}/{profiles}", tags=["config"])
    async def environment_or_labelled_document(application: str, profiles: str,
                                               resolvePlaceholders: bool = True) -> Any:
        # "/{label}/{name}-{profiles}.yml" and "/{name}/{profiles}" share a shape; the extension decides.
        if os.path.splitext(profiles)[1] in DOCUMENT_TYPES:
            return await run_in_threadpool(document, profiles, application, resolvePlaceholders)
        return await run_in_threadpool(environment, application, profiles, None)

    @app.get("/{application}/{profiles}/{label}", tags=["config"])
    async def labelled_environment(application: str, profiles: str, label: str) -> Any:
        return await run_in_threadpool(environment, application, profiles, _label(label))

    return app

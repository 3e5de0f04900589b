"""The HTTP API: thin FastAPI handlers over the metadata store and the blob store."""


import asyncio
import dataclasses
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any

from cachetools import TTLCache
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import limits, models
from .blobs import open_blob_store
from .blobs.base import block_hashes, verify_chunk
from .blobs.signing import UrlSigner
from .config import ServerConfig
from .errors import ApiError, BadRequest, NotFound, TooLarge, Unauthorized
from .notify import ChangeNotifier
from .store.db import open_database
from .store.metadata import ChunkInfo, MetadataStore, User

log = logging.getLogger("drivefs.server")
VERSION = "0.1.0"
API = "/api/v1"
# Blob writes of one request in flight at once (small files inline).
BLOB_WRITERS = 8
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": models.ErrorBody} for code in (400, 401, 403, 404, 409, 410, 413, 422)
}


class BodyLimit:
    """ASGI middleware refusing request bodies above a size, with or without a Content-Length."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await _error_response(TooLarge(f"request body above {self.max_bytes} bytes"))(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # An HTTPException, so that FastAPI's body parsing passes it on instead of turning it into a 400.
                raise StarletteHTTPException(413, f"request body above {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


async def _noop() -> None:
    return None


class BlobResponse(FileResponse):
    """A stored chunk sent in 1 MiB reads: each read is a hop to a worker thread, and Starlette's 64 KiB
    default made serving a chunk cost as much server CPU as the client spends receiving it."""

    chunk_size = 1024 * 1024


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


class Services:
    """What the handlers need, built once per app: the stores, the signer and the notifier."""

    def __init__(self, config: ServerConfig) -> None:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.notifier = ChangeNotifier()
        self.db = open_database(config.database_url, config.data_dir)
        self.store = MetadataStore(self.db, on_change=self._changed)
        self.store.init_schema()
        self.signer = UrlSigner(config.secret())
        self.blobs = open_blob_store(config, self.signer)
        # Writes the blobs of a request that brings several (small files inline) side by side: each
        # waits mostly on its fsyncs or its S3 PUT (8 at once: 0.69 -> 0.28 ms per small blob on a disk).
        self.blob_writers = ThreadPoolExecutor(max_workers=BLOB_WRITERS, thread_name_prefix="blob-write")
        self._tokens: TTLCache[str, User] = TTLCache(maxsize=4096, ttl=10)

    def _changed(self, users: set[int]) -> None:
        """Wake this process's long-polls at once, and the other processes' through the database."""
        self.notifier.notify(users)
        self.db.publish(users)

    def _heard(self, users: set[int] | None) -> None:
        """A change announced by any server process (None: some may have been missed)."""
        if users is None:
            self.notifier.notify_all()
        else:
            self.notifier.notify(users)

    def authenticate(self, token: str) -> User:
        user = self._tokens.get(token)
        if user is None:
            user = self.store.user_by_token(token)
            if user is None:
                raise Unauthorized("unknown or revoked token")
            self._tokens[token] = user
        return user


def create_app(config: ServerConfig) -> FastAPI:
    svc = Services(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.notifier.bind(asyncio.get_running_loop())
        await run_in_threadpool(svc.db.subscribe, svc._heard)
        yield
        svc.blob_writers.shutdown()
        svc.db.close()

    app = FastAPI(title="drivefs", version=VERSION, lifespan=lifespan, responses=_ERRORS)
    app.state.services = svc
    bearer = HTTPBearer(auto_error=False)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg", "")} for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"][1:] or first["loc"])
        body = {"error": {"code": "invalid", "message": f"{where}: {first['msg']}" if where else first["msg"],
                          "details": {"errors": errors}}}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: BadRequest.code, 404: NotFound.code, 405: "method_not_allowed", 413: TooLarge.code}
        code = codes.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail), "details": {}}},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": {"code": "internal", "message": "internal server error", "details": {}}},
                            status_code=500)

    def current_user(cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> User:
        if cred is None or cred.scheme.lower() != "bearer":
            raise Unauthorized("send 'Authorization: Bearer <token>' (drive login saves one)")
        return svc.authenticate(cred.credentials)

    Caller = Annotated[User, Depends(current_user)]
    Device = Annotated[str | None, Header(alias="X-Drive-Device", max_length=255)]
    Limit = Annotated[int, Query(ge=1, le=limits.MAX_PAGE)]
    store = svc.store

    @app.get("/health", response_model=models.Health, tags=["meta"])
    def health() -> models.Health:
        return models.Health(status="ok", version=VERSION)

    @app.get(f"{API}/me", response_model=models.Me, tags=["meta"])
    def me(user: Caller) -> models.Me:
        return store.me(user)

    # ---- tree ----
    @app.get(f"{API}/resolve", response_model=models.Node, tags=["tree"])
    def resolve(user: Caller, path: Annotated[str, Query(max_length=65536)]) -> models.Node:
        return store.node_by_path(user, path)

    @app.get(f"{API}/nodes/{{node_id}}", response_model=models.Node, tags=["tree"])
    def get_node(user: Caller, node_id: models.NodeId) -> models.Node:
        return store.get_node(user, node_id)

    @app.get(f"{API}/nodes/{{node_id}}/children", response_model=models.Listing, tags=["tree"])
    def children(user: Caller, node_id: models.NodeId, cursor: Annotated[str | None, Query(max_length=1024)] = None,
                 limit: Limit = limits.DEFAULT_PAGE) -> models.Listing:
        return store.list_children(user, node_id, cursor, limit)

    @app.post(f"{API}/folders", response_model=models.Node, status_code=201, tags=["tree"])
    def create_folder(user: Caller, req: models.FolderCreate, device: Device = None) -> models.Node:
        return store.create_folder(user, req, device)

    @app.post(f"{API}/symlinks", response_model=models.Node, status_code=201, tags=["tree"])
    def create_symlink(user: Caller, req: models.SymlinkCreate, device: Device = None) -> models.Node:
        return store.create_symlink(user, req, device)

    @app.post(f"{API}/files", response_model=models.Node, tags=["tree"])
    def commit_file(user: Caller, req: models.FileCommit, device: Device = None) -> models.Node:
        if req.device is None and device:
            req.device = device
        return store.commit_file(user, req)

    @app.post(f"{API}/files/small", response_model=models.SmallFilesAnswer, tags=["tree"])
    def commit_small_files(user: Caller, req: models.SmallFiles, device: Device = None) -> models.SmallFilesAnswer:
        """Create or update several small files, bytes included, in one request: each is stored and
        committed on its own, and its result is its node or the error a commit of it alone would have had."""
        # Every file's bytes are durable before the one transaction that records and commits them all.
        staged = _stage_small_files(svc, req.files, device)
        results = []
        for outcome in store.commit_files(user, staged):
            if isinstance(outcome, ApiError):
                results.append(models.SmallFileResult(status=outcome.status, error=models.ErrorDetail(
                    code=outcome.code, message=outcome.message, details=outcome.details)))
            else:
                results.append(models.SmallFileResult(node=outcome))
        return models.SmallFilesAnswer(results=results)

    @app.post(f"{API}/nodes/{{node_id}}/move", response_model=models.Node, tags=["tree"])
    def move(user: Caller, node_id: models.NodeId, req: models.Move, device: Device = None) -> models.Node:
        return store.move(user, node_id, req, device)

    @app.patch(f"{API}/nodes/{{node_id}}", response_model=models.Node, tags=["tree"])
    def set_attr(user: Caller, node_id: models.NodeId, req: models.AttrUpdate, device: Device = None) -> models.Node:
        return store.set_attr(user, node_id, req, device)

    @app.delete(f"{API}/nodes/{{node_id}}", response_model=models.Node, tags=["tree"])
    def delete(user: Caller, node_id: models.NodeId, require_empty: bool = False, device: Device = None) -> models.Node:
        return store.delete(user, node_id, require_empty, device)

    @app.post(f"{API}/nodes/{{node_id}}/restore", response_model=models.Node, tags=["tree"])
    def restore(user: Caller, node_id: models.NodeId, req: models.Restore, device: Device = None) -> models.Node:
        return store.restore_node(user, node_id, req.name, device)

    @app.get(f"{API}/trash", response_model=models.Listing, tags=["tree"])
    def trash(user: Caller, limit: Limit = limits.DEFAULT_PAGE) -> models.Listing:
        return store.list_trash(user, limit)

    # ---- versions ----
    @app.get(f"{API}/nodes/{{node_id}}/versions", response_model=models.VersionList, tags=["versions"])
    def versions(user: Caller, node_id: models.NodeId) -> models.VersionList:
        return store.versions(user, node_id)

    @app.get(f"{API}/nodes/{{node_id}}/versions/{{version}}", response_model=models.VersionDetail, tags=["versions"])
    def version_detail(user: Caller, node_id: models.NodeId, version: models.VersionNo) -> models.VersionDetail:
        return store.version_detail(user, node_id, version)

    @app.post(f"{API}/nodes/{{node_id}}/versions/{{version}}/restore", response_model=models.Node, tags=["versions"])
    def restore_version(user: Caller, node_id: models.NodeId, version: models.VersionNo,
                        device: Device = None) -> models.Node:
        return store.restore_version(user, node_id, version, device)

    # ---- chunks ----
    @app.post(f"{API}/chunks/missing", response_model=models.MissingAnswer, tags=["chunks"])
    def missing(user: Caller, req: models.MissingQuery) -> models.MissingAnswer:
        return models.MissingAnswer(missing=store.missing_chunks(user, req.hashes))

    @app.post(f"{API}/chunks/upload-urls", response_model=models.SignedUrls, tags=["chunks"])
    def upload_urls(user: Caller, req: models.UploadUrlQuery) -> models.SignedUrls:
        return models.SignedUrls(urls=[svc.blobs.upload_url(c, user.id) for c in req.chunks])

    @app.post(f"{API}/chunks/download-urls", response_model=models.SignedUrls, tags=["chunks"])
    def download_urls(user: Caller, req: models.DownloadUrlQuery) -> models.SignedUrls:
        infos = store.readable_chunks(user, req.node_id, req.version, req.hashes)
        urls = [svc.blobs.download_url(i, user.id) for i in infos]
        if req.blocks:
            urls = [_with_blocks(u, i) for u, i in zip(urls, infos, strict=True)]
        return models.SignedUrls(urls=urls)

    @app.post(f"{API}/chunks/confirm", response_model=models.MissingAnswer, tags=["chunks"])
    def confirm(user: Caller, req: models.ConfirmQuery) -> models.MissingAnswer:
        """Verify chunks PUT through URLs marked `confirm` and record them; answers which are still missing."""
        return models.MissingAnswer(missing=[c.hash for c in req.chunks if not _confirm_blob(svc, user, c)])

    @app.put("/blobs/{chunk_hash}", status_code=201, tags=["blobs"], responses={201: {"description": "stored"}})
    async def put_blob(chunk_hash: str, request: Request) -> JSONResponse:
        _local_blobs(svc)
        grant = svc.signer.check("PUT", chunk_hash, dict(request.query_params))
        # Received into one buffer of the size the URL grants, and handed on as it is: growing a
        # bytearray and copying it into bytes cost the server two more copies of every chunk.
        body = bytearray(grant.stored_size)
        got = 0
        with memoryview(body) as view:
            async for part in request.stream():
                if got + len(part) > grant.stored_size:
                    raise TooLarge(f"the chunk is larger than the {grant.stored_size} bytes this URL allows")
                view[got:got + len(part)] = part
                got += len(part)
        if got != grant.stored_size:
            raise BadRequest(f"expected {grant.stored_size} bytes, got {got}")
        info = ChunkInfo(chunk_hash, grant.size, grant.stored_size, grant.encoding)
        stored = await run_in_threadpool(_store_blob, svc, grant.user_id, info, body)
        return JSONResponse({"hash": chunk_hash, "encoding": stored.encoding}, status_code=201)

    @app.get("/blobs/{chunk_hash}", tags=["blobs"], response_class=BlobResponse,
             responses={200: {"content": {"application/octet-stream": {}}},
                        206: {"description": "the bytes a `Range: bytes=a-b` header asked for, with Content-Range"},
                        416: {"description": "the Range starts past the end of the object"}})
    def get_blob(chunk_hash: str, request: Request) -> BlobResponse:
        """The stored bytes of a chunk; with `Range: bytes=a-b`, just those (FileResponse serves ranges: 206
        with Content-Range, 416 past the end). The signature covers the object, method and expiry, not the
        range: any part of an object the URL grants may be read."""
        _local_blobs(svc)
        grant = svc.signer.check("GET", chunk_hash, dict(request.query_params))
        path = svc.blobs.path(chunk_hash, grant.encoding)
        if not path.is_file():
            raise NotFound("this chunk is not in the blob store")
        return BlobResponse(path, media_type="application/octet-stream",
                            headers={"X-Drive-Encoding": grant.encoding, "Cache-Control": "private, max-age=0"})

    # ---- resumable uploads ----
    @app.post(f"{API}/uploads", response_model=models.UploadSession, status_code=201, tags=["uploads"])
    def create_upload(user: Caller, req: models.FileCommit, device: Device = None) -> models.UploadSession:
        if req.device is None and device:
            req.device = device
        return store.create_session(user, req, config.session_ttl_s)

    @app.get(f"{API}/uploads/{{sid}}", response_model=models.UploadSession, tags=["uploads"])
    def get_upload(user: Caller, sid: Annotated[str, models.Field(max_length=64)]) -> models.UploadSession:
        return store.session(user, sid)

    @app.post(f"{API}/uploads/{{sid}}/commit", response_model=models.Node, tags=["uploads"])
    def commit_upload(user: Caller, sid: Annotated[str, models.Field(max_length=64)]) -> models.Node:
        return store.commit_session(user, sid)

    @app.delete(f"{API}/uploads/{{sid}}", status_code=204, tags=["uploads"])
    def drop_upload(user: Caller, sid: Annotated[str, models.Field(max_length=64)]) -> None:
        store.drop_session(user, sid)

    # ---- shares ----
    @app.post(f"{API}/nodes/{{node_id}}/shares", response_model=models.Share, status_code=201, tags=["shares"])
    def share(user: Caller, node_id: models.NodeId, req: models.ShareCreate) -> models.Share:
        return store.share(user, node_id, req)

    @app.get(f"{API}/nodes/{{node_id}}/shares", response_model=models.ShareList, tags=["shares"])
    def shares_of(user: Caller, node_id: models.NodeId) -> models.ShareList:
        return store.shares_of(user, node_id)

    @app.delete(f"{API}/nodes/{{node_id}}/shares/{{name}}", status_code=204, tags=["shares"])
    def unshare(user: Caller, node_id: models.NodeId, name: Annotated[str, models.Field(max_length=255)]) -> None:
        store.unshare(user, node_id, name)

    @app.get(f"{API}/shares/with-me", response_model=models.SharedItems, tags=["shares"])
    def shared_with_me(user: Caller) -> models.SharedItems:
        return store.shared_with_me(user)

    @app.get(f"{API}/shares/by-me", response_model=models.ShareList, tags=["shares"])
    def shared_by_me(user: Caller) -> models.ShareList:
        return store.shared_by_me(user)

    # ---- changes feed ----
    @app.get(f"{API}/changes/latest", response_model=models.Cursor, tags=["changes"])
    def latest(user: Caller) -> models.Cursor:
        return models.Cursor(cursor=str(store.latest_cursor()))

    @app.get(f"{API}/changes", response_model=models.Changes, tags=["changes"])
    async def changes(user: Caller, cursor: Annotated[str, Query(pattern=r"^[0-9]{1,18}$")] = "0",
                      limit: Limit = 500,
                      wait: Annotated[float, Query(ge=0, le=limits.MAX_LONGPOLL_SECONDS)] = 0,
                      exclude_device: Annotated[str | None, Query(max_length=255)] = None) -> models.Changes:
        after = int(cursor)
        deadline = time.monotonic() + wait
        while True:
            event = svc.notifier.event_for(user.id)
            page = await run_in_threadpool(store.changes, user, after, limit, exclude_device)
            remaining = deadline - time.monotonic()
            if page.changes or remaining <= 0 or svc.notifier.closing:
                return page
            after = int(page.cursor)  # past the caller's own changes: keep waiting for others' from there
            if page.has_more:
                continue
            try:
                await asyncio.wait_for(event.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                pass

    return _with_limits(app)


def _store_blob(svc: Services, user_id: int, info: ChunkInfo, data: bytes | bytearray) -> ChunkInfo:
    """Verify an uploaded chunk, keep its bytes unless an equal chunk is already stored, record it."""
    return svc.store.record_chunk(user_id, _keep_blobs(svc, [(info, data)])[0])


def _keep_blobs(svc: Services, chunks: list[tuple[ChunkInfo, bytes | bytearray]], *,
                verified: bool = False) -> list[ChunkInfo]:
    """Verify chunks and keep the bytes (durably) of those not stored yet, several side by side; the form
    of each to record, with its block hashes when it is stored plain and has none yet. verified=True only
    for plain chunks this server has just hashed itself: they are not hashed again."""
    stored: list[ChunkInfo] = []
    writes: dict[tuple[str, str], bytes | bytearray] = {}
    for info, data in chunks:
        plain = data if verified else verify_chunk(info.hash, info.encoding, info.size, data)
        existing = svc.store.chunk_info(info.hash)
        if existing is None or not svc.blobs.exists(existing.hash, existing.encoding):
            writes[(info.hash, info.encoding)] = data
            existing = None
        kept = existing or info
        if kept.encoding == "none" and kept.block_hashes is None:
            kept = dataclasses.replace(kept, block_hashes=block_hashes(plain))
        stored.append(kept)
    if len(writes) == 1:
        [((hash_, encoding), data)] = writes.items()
        svc.blobs.write(hash_, encoding, data)
    else:  # list() waits for all, and raises the first failure
        list(svc.blob_writers.map(lambda item: svc.blobs.write(*item[0], item[1]), writes.items()))
    return stored


def _stage_small_files(svc: Services, files: list[models.SmallFile], device: str | None
                       ) -> list[tuple[ChunkInfo | None, models.FileCommit]]:
    """Keep each inline file's bytes as its one chunk (the server hashes them itself); for each file,
    the chunk to record (None for an empty file) and the commit to make."""
    contents = [f.data() for f in files]
    digests = [hashlib.sha256(data).hexdigest() for data in contents]
    chunks = iter(_keep_blobs(svc, [(ChunkInfo(digest, len(data), len(data), "none"), data)
                                    for digest, data in zip(digests, contents) if data], verified=True))
    staged = []
    for f, data, digest in zip(files, contents, digests):
        chunk = next(chunks) if data else None
        staged.append((chunk, models.FileCommit(
            node_id=f.node_id, base_version=f.base_version, parent_id=f.parent_id, name=f.name,
            manifest=[models.ChunkSpec(hash=digest, size=len(data))] if data else [], size=len(data),
            mode=f.mode, mtime_ns=f.mtime_ns, content_hash=digest, device=device)))
    return staged


def _with_blocks(url: models.SignedUrl, info: ChunkInfo) -> models.SignedUrl:
    """`url` with the chunk's block hashes, when it has them (stored plain, verified by this server version)."""
    if info.encoding != "none" or not info.block_hashes:
        return url
    digests = info.block_hashes
    return url.model_copy(update={"block_size": limits.BLOCK_BYTES,
                                  "block_hashes": [digests[i:i + 64] for i in range(0, len(digests), 64)]})


def _confirm_blob(svc: Services, user: User, chunk: models.UploadChunk) -> bool:
    """Check a chunk a user uploaded to the blob store's staging area and record it; False if nothing is there.

    Already holding the chunk is enough (e.g. another device of theirs confirmed the same upload first).
    Otherwise the staged bytes are read back, and only bytes that match the chunk's name are stored under
    it (see blobs/s3.py). The staging copy goes away either way; a mismatch raises Invalid/BadRequest.
    """
    if svc.store.missing_chunks(user, [chunk.hash]):
        data = svc.blobs.read_staged(user.id, chunk)
        if data is None:
            return False
        try:
            _store_blob(svc, user.id, ChunkInfo(chunk.hash, chunk.size, chunk.stored_size, chunk.encoding), data)
        finally:
            svc.blobs.discard_staged(user.id, chunk)
        return True
    if svc.blobs.confirms:
        svc.blobs.discard_staged(user.id, chunk)
    return True


def _local_blobs(svc: Services) -> None:
    if svc.blobs.confirms:
        raise NotFound("this server keeps chunks in an S3 store: use the URLs it hands out")


def _with_limits(app: FastAPI) -> FastAPI:
    # Blob bodies are bounded by their signed size in the handler; this bounds everything else.
    app.add_middleware(BodyLimit, max_bytes=limits.MAX_JSON_BODY_BYTES)
    return app

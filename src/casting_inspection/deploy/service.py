"""The inspection service: FastAPI over one loaded model.

POST /predict (multipart, one or several files in the field `files`), GET /health, GET /model.
Every error is a 4xx with a JSON body that says what to change; clients never see a stack trace.
"""

from __future__ import annotations

import dataclasses
import logging

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from casting_inspection.deploy.inference import Inspector

log = logging.getLogger("casting_inspection.deploy.service")


@dataclasses.dataclass(frozen=True)
class Limits:
    max_upload_bytes: int  # per file
    max_files: int  # per request


class ClientError(Exception):
    def __init__(self, status: int, message: str, **details):
        super().__init__(message)
        self.status, self.message, self.details = status, message, details


def create_app(inspector: Inspector, limits: Limits) -> FastAPI:
    app = FastAPI(
        title="Casting inspection",
        version=inspector.version,
        description="Decides whether a cast impeller in a top-view photo is defective.",
    )

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError):
        return JSONResponse({"error": exc.message, **exc.details}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": "invalid request", "details": [e.get("msg", "") for e in exc.errors()]}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)  # the trace stays in the server's log
        return JSONResponse({"error": "internal error; see the server log"}, status_code=500)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model_version": inspector.version}

    @app.get("/model")
    def model() -> dict:
        return inspector.info()

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ClientError(415, "send the images as multipart/form-data in the field 'files'")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_files * limits.max_upload_bytes + 65536:
            raise ClientError(413, f"request too large: at most {limits.max_files} files of {limits.max_upload_bytes} bytes")
        try:
            form = await request.form(max_files=limits.max_files, max_fields=16)
        except (MultiPartException, StarletteHTTPException) as exc:
            reason = getattr(exc, "message", None) or getattr(exc, "detail", "")
            raise ClientError(
                400, f"{reason.rstrip('.')}: send at most {limits.max_files} files in one well-formed multipart body"
            ) from None
        uploads = [item for item in form.getlist("files") if isinstance(item, UploadFile)]
        if not uploads:
            raise ClientError(400, "no files: send one or more images in the multipart field 'files'")
        named = []
        for upload in uploads:
            data = await upload.read(limits.max_upload_bytes + 1)
            if len(data) > limits.max_upload_bytes:
                raise ClientError(413, f"{upload.filename}: larger than {limits.max_upload_bytes} bytes", file=upload.filename)
            named.append((upload.filename or "", data))
        await form.close()
        results = await run_in_threadpool(inspector.inspect, named)
        bad = [{"file": r.path, "reason": r.error} for r in results if r.error]
        if bad:
            raise ClientError(422, "not a usable image: " + "; ".join(f"{b['file']}: {b['reason']}" for b in bad), files=bad)
        return {
            "model_version": inspector.version,
            "threshold": inspector.threshold,
            "review_band": list(inspector.review_band) if inspector.review_band else None,
            "results": [{"file": r.path, "decision": r.decision, "defect_probability": r.defect_probability} for r in results],
        }

    return app

"""The web UI: static files, and the page at `/` under a Content-Security-Policy that lets
only the UI's own scripts run, so that markup slipping past the sanitiser still cannot."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

# Images may come from anywhere because the UI shows a remote image only after a click
# (the sanitiser turns each into a consent button); email previews add their own stricter
# policy inside their sandboxed frame.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: https: http:",
        "connect-src 'self'",
        "frame-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "object-src 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The page is tiny and changes with each release: always revalidate.
    "Cache-Control": "no-cache",
}


def install(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def web_ui() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

"""The console's web application (Starlette, Jinja2 with autoescaping), read-only and gated.

Every request needs the console's token: ``?token=`` once (it is then kept in an HttpOnly,
SameSite=Strict cookie and removed from the address bar, as Jupyter does), or an
``Authorization: token ...`` header. Only GET and HEAD are served. Pages load nothing from
elsewhere (a strict Content-Security-Policy says so to the browser), and names in URLs are looked
up among the ledgers and runs found, never joined to a path.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markdown_it import MarkdownIt
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from federation.console import plots, views
from federation.errors import AllfedError
from federation.server.outputs import REPORT
from federation.wire.model_files import MODEL_CARD_MD

READ_ONLY = ("GET", "HEAD")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# report.html and an analysis's table are self-contained: their own <style>, plots as data:
# URIs, and no script.
_REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"
_STATIC = Path(__file__).parent / "static"


def build_app(sources: views.Sources, token: str, loopback: bool = True) -> Starlette:
    """The console over ``sources``; ``loopback`` also refuses requests whose Host is not a
    loopback name (DNS rebinding)."""
    templates = Jinja2Templates(env=_environment())
    pages = _Pages(sources, templates)
    routes = [
        Route("/", pages.overview),
        Route("/sites/{name}", pages.site),
        Route("/sites/{name}/epsilon.svg", pages.site_plot),
        Route("/runs/{name}", pages.run),
        Route("/runs/{name}/live", pages.run_live),
        Route("/runs/{name}/rounds.svg", pages.run_rounds_plot),
        Route("/runs/{name}/epsilon.svg", pages.run_epsilon_plot),
        Route("/runs/{name}/report.html", pages.run_report),
        Route("/runs/{name}/model-card", pages.run_model_card),
        Route("/runs/{name}/table.html", pages.run_table),
        Route("/api/runs/{name}", pages.run_state),
        Route("/favicon.ico", _favicon),
        Mount("/static", StaticFiles(directory=_STATIC), name="static"),
    ]
    middleware = [Middleware(_Gate, token=token)]
    if loopback:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_NAMES))
    return Starlette(routes=routes, middleware=middleware)


class _Gate(BaseHTTPMiddleware):
    """Read-only, token or refused; security headers on every answer."""

    def __init__(self, app, token: str) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next) -> Response:
        if request.method not in READ_ONLY:
            response: Response = PlainTextResponse(
                "405: the console is read-only (GET only)\n",
                405,
                headers={"Allow": ", ".join(READ_ONLY)},
            )
        elif self._valid(request.query_params.get("token")):
            target = request.url.remove_query_params("token")
            query = f"?{target.query}" if target.query else ""
            response = RedirectResponse(f"{target.path}{query}", 303)
            response.set_cookie(self._cookie(request), self.token, httponly=True, samesite="strict")
        elif self._valid(request.cookies.get(self._cookie(request))) or self._valid(
            _header_token(request)
        ):
            response = await call_next(request)
        else:
            response = PlainTextResponse(
                "403: this console needs its token; open the address `allfed console` printed "
                "when it started (http://127.0.0.1:PORT/?token=...)\n",
                403,
            )
        _secure(response, request)
        return response

    def _valid(self, given: str | None) -> bool:
        return given is not None and secrets.compare_digest(given.encode(), self.token.encode())

    @staticmethod
    def _cookie(request: Request) -> str:
        """One cookie per port: browsers share cookies between ports of one host."""
        server = request.scope.get("server") or ("", 0)
        return f"allfed-console-{server[1]}"


def _header_token(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "token" else None


def _secure(response: Response, request: Request) -> None:
    own_page = request.url.path.endswith((f"/{REPORT}", "/table.html"))
    response.headers.setdefault("Content-Security-Policy", _REPORT_CSP if own_page else _CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"


class _Pages:
    """The endpoints; each reads what it shows when asked (ledgers and runs change)."""

    def __init__(self, sources: views.Sources, templates: Jinja2Templates) -> None:
        self.sources = sources
        self.templates = templates

    def _page(self, request: Request, template: str, **context: Any) -> Response:
        return self.templates.TemplateResponse(request, template, context)

    def overview(self, request: Request) -> Response:
        sites, site_errors = [], []
        for name, path in self.sources.ledgers().items():
            try:
                sites.append(views.site_summary(name, path))
            except AllfedError as error:
                site_errors.append(str(error))
        runs = [views.run_line(name, path) for name, path in self.sources.runs().items()]
        runs.sort(key=lambda r: r["updated"] or 0, reverse=True)
        return self._page(
            request,
            "overview.html",
            sites=sites,
            site_errors=site_errors,
            runs=runs,
            sources=self.sources,
        )

    def site(self, request: Request) -> Response:
        name, path = self._ledger(request)
        view = _or_400(views.site_view, name, path, self.sources.policies.get(name))
        return self._page(request, "site.html", site=view)

    def site_plot(self, request: Request) -> Response:
        _, path = self._ledger(request)
        series = _or_400(views.epsilon_series, path)
        return _svg(plots.lifetime_figure(series))

    def run(self, request: Request) -> Response:
        name, path = self._run(request)
        return self._page(request, "run.html", run=_or_400(views.run_view, name, path))

    def run_live(self, request: Request) -> Response:
        """The live part of a run's page alone: what the page swaps in when a round lands."""
        name, path = self._run(request)
        return self._page(request, "run_live.html", run=_or_400(views.run_view, name, path))

    def run_state(self, request: Request) -> Response:
        name, path = self._run(request)
        return JSONResponse(_or_400(views.run_state, name, path))

    def run_rounds_plot(self, request: Request) -> Response:
        _, path = self._run(request)
        return _svg(plots.rounds_figure(_or_400(views.read_complete_rounds, path)))

    def run_epsilon_plot(self, request: Request) -> Response:
        name, path = self._run(request)
        view = _or_400(views.run_view, name, path)
        target = (view["privacy"] or {}).get("target_epsilon")
        rounds = _or_400(views.read_complete_rounds, path)
        return _svg(plots.run_epsilon_figure(rounds, target))

    def run_report(self, request: Request) -> Response:
        _, path = self._run(request)
        if not (path / REPORT).is_file():
            raise HTTPException(404, "this run has no report yet")
        return FileResponse(path / REPORT, media_type="text/html")

    def run_table(self, request: Request) -> Response:
        """An analysis's table (``<kind>.html``), written by ``allfed analyze``."""
        name, path = self._run(request)
        view = _or_400(views.run_view, name, path)
        if not view["table"]:
            raise HTTPException(404, "this run has no table")
        return FileResponse(path / f"{view['analysis']}.html", media_type="text/html")

    def run_model_card(self, request: Request) -> Response:
        name, path = self._run(request)
        if not (path / MODEL_CARD_MD).is_file():
            raise HTTPException(404, "this run has no model card yet")
        markdown = (path / MODEL_CARD_MD).read_text(encoding="utf-8")
        card = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
        return self._page(request, "model_card.html", name=name, card=card)

    def _ledger(self, request: Request) -> tuple[str, Path]:
        name = request.path_params["name"]
        ledgers = self.sources.ledgers()
        if name not in ledgers:
            raise HTTPException(404, f"no ledger named {name!r}")
        return name, ledgers[name]

    def _run(self, request: Request) -> tuple[str, Path]:
        name = request.path_params["name"]
        runs = self.sources.runs()
        if name not in runs:
            raise HTTPException(404, f"no run named {name!r}")
        return name, runs[name]


def _or_400(read, *args):
    """A file the console cannot read is the operator's to fix: say which, not a traceback."""
    try:
        return read(*args)
    except AllfedError as error:
        raise HTTPException(400, str(error)) from None


def _favicon(request: Request) -> Response:
    """Browsers ask for it on pages that name no icon (a run's report)."""
    return FileResponse(_STATIC / "favicon.svg", media_type="image/svg+xml")


def _svg(figure) -> Response:
    return Response(plots.svg(figure), media_type="image/svg+xml")


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("federation.console", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(eps=_eps, when=_when, num=_num, short=lambda run_id: str(run_id)[:12])
    return env


def _eps(value: float | None, digits: int = 4) -> str:
    """Epsilon as ``allfed privacy ledger`` prints it (4 decimals)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")

"""The dashboard's Starlette application: pages (Jinja templates, plain forms), the login, the actions.

Every request is identified first (:func:`Dashboard.identify`): a login session cookie, an ``Authorization`` header
(``Bearer`` for token auth, ``Basic`` for a users file) or, only when no auth is configured (loopback), an anonymous
session. A POST must come from this origin and carry the session's CSRF token (header-authenticated requests carry
no cookie and need only the origin check). Patient names and IDs are shown to authenticated users only.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dicomnode.config import NodeConfig
from dicomnode.dashboard import actions, queries
from dicomnode.dashboard.auth import LOGIN_COOKIE, SESSION_COOKIE, Authenticator, SessionStore, same_token
from dicomnode.dashboard.auth import Session as LoginSession
from dicomnode.dashboard.svg import throughput_svg
from dicomnode.feedback import report as feedback_report
from dicomnode.feedback.report import percent
from dicomnode.status import status_summary
from dicomnode.uids import is_valid_uid

LOG = logging.getLogger("dicomnode.dashboard")
ANONYMOUS = "anonymous"


@dataclass
class Identity:
    user: str
    session_id: str | None
    session: LoginSession | None
    via_header: bool = False

    @property
    def authenticated(self) -> bool:
        """A configured user (token or users file), not the anonymous loopback visitor."""
        return self.user != ANONYMOUS


def _fmt_time(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "—"


def _ago(value: dt.datetime | None) -> str:
    if value is None:
        return "never"
    seconds = (dt.datetime.now(dt.UTC) - value).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{max(seconds, 0):.0f} s ago"


def _safe_next(target: str | None) -> str:
    """A local path to go back to after login (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class Dashboard:
    """Holds what the pages need: config, the node's session factory, live facts of the node process."""

    def __init__(self, config: NodeConfig, session_factory: sessionmaker[Session], authenticator: Authenticator,
                 live: queries.LiveFacts | None = None, on_queued: Callable[[], None] | None = None) -> None:
        self.config = config
        self.session_factory = session_factory
        self.auth = authenticator
        self.sessions = SessionStore(config.dashboard.session_minutes * 60)
        self.live = live
        self.on_queued = on_queued  # wakes the in-process worker/deliverer after an action queued work
        self.data_dir = actions.data_dir_of(config)
        self.templates = Environment(loader=PackageLoader("dicomnode.dashboard", "templates"),
                                     autoescape=select_autoescape(["html"]))
        self.templates.filters.update(time=_fmt_time, ago=_ago, first_line=queries.first_line, percent=percent)

    # -- identity and guards ---------------------------------------------------------------------------------
    def identify(self, request: Request) -> Identity | None:
        user = self.auth.check_header(request.headers.get("authorization")) if self.auth.enabled else None
        if user is not None:
            return Identity(user, None, None, via_header=True)
        session_id = request.cookies.get(SESSION_COOKIE)
        session = self.sessions.get(session_id)
        if session is not None:
            return Identity(session.user, session_id, session)
        if not self.auth.enabled:  # loopback without auth: an anonymous session (it carries the CSRF token)
            session_id, session = self.sessions.create(ANONYMOUS)
            return Identity(ANONYMOUS, session_id, session)
        return None

    @staticmethod
    def same_origin(request: Request) -> bool:
        """False when the browser says the request comes from another site (Origin, else Referer)."""
        source = request.headers.get("origin") or request.headers.get("referer")
        if not source:
            return True
        if source == "null":
            return False
        return urlsplit(source).netloc == request.headers.get("host", "")

    async def csrf_ok(self, request: Request, who: Identity, form: Any) -> bool:
        if not self.same_origin(request):
            return False
        if who.via_header:
            return True
        return who.session is not None and same_token(form.get("csrf_token"), who.session.csrf)

    def render(self, request: Request, who: Identity | None, template: str, status: int = 200,
               **context: Any) -> HTMLResponse:
        page = self.templates.get_template(template).render(
            request=request, who=who, csrf=who.session.csrf if who and who.session else "",
            node=self.config.node, auth_enabled=self.auth.enabled, message=request.query_params.get("msg", ""),
            **context)
        response = HTMLResponse(page, status_code=status)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
        response.headers["Referrer-Policy"] = "same-origin"
        if who is not None and who.session_id and request.cookies.get(SESSION_COOKIE) != who.session_id:
            self._set_session_cookie(response, who.session_id)
        return response

    def _set_session_cookie(self, response: Response, session_id: str) -> None:
        response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="strict", path="/",
                            max_age=int(self.config.dashboard.session_minutes * 60))

    def refuse(self, request: Request) -> Response:
        """Unauthenticated: browsers asking for a page go to the login form, anything else gets 401."""
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        headers = {"WWW-Authenticate": 'Bearer realm="cxr-node"'} if self.auth.type == "token" else {}
        return PlainTextResponse("authentication required\n", status_code=401, headers=headers)

    # -- pages -----------------------------------------------------------------------------------------------
    def page(self, handler: Callable[[Request, Identity], Awaitable[Response]]) -> Callable[[Request],
                                                                                          Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            who = self.identify(request)
            if who is None:
                return self.refuse(request)
            return await handler(request, who)
        return endpoint

    def action(self, handler: Callable[[Request, Identity, Any], Awaitable[str]],
               ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            who = self.identify(request)
            if who is None:
                return self.refuse(request)
            form = await request.form()
            if not await self.csrf_ok(request, who, form):
                LOG.warning("dashboard: POST %s refused: missing or wrong CSRF token or foreign origin",
                            request.url.path)
                return PlainTextResponse("refused: missing or invalid CSRF token\n", status_code=403)
            try:
                message = await handler(request, who, form)
            except actions.ActionError as exc:
                message = f"not done: {exc}"
            else:
                if self.on_queued is not None:
                    self.on_queued()
            back = _safe_next(str(form.get("back") or "/"))
            separator = "&" if "?" in back else "?"
            return RedirectResponse(f"{back}{separator}msg={quote(message)}", status_code=303)
        return endpoint

    async def overview(self, request: Request, who: Identity) -> Response:
        live = self.live() if self.live else None
        data = await run_in_threadpool(queries.overview, self.session_factory, self.config, live)
        return self.render(request, who, "overview.html", data=data, plot=Markup(throughput_svg(data["throughput"])))

    async def status_json(self, request: Request, who: Identity) -> Response:
        return JSONResponse(await run_in_threadpool(status_summary, self.session_factory))

    async def studies(self, request: Request, who: Identity) -> Response:
        params = request.query_params
        f = queries.StudyFilter(state=params.get("state", "") if params.get("state") in queries.STATES else "",
                                destination=params.get("destination", "")[:64], q=params.get("q", "")[:64],
                                triage=params.get("triage", "") if params.get("triage") in (*queries.TRIAGE, "raised")
                                else "")
        try:
            f.received_from = dt.date.fromisoformat(params["from"]) if params.get("from") else None
            f.received_to = dt.date.fromisoformat(params["to"]) if params.get("to") else None
            f.page = max(1, int(params.get("page", "1")))
        except ValueError:
            return PlainTextResponse("bad filter: dates are YYYY-MM-DD, page a number\n", status_code=400)

        def load() -> tuple[list[queries.StudyRow], int, list[str]]:
            rows, total = queries.list_studies(self.session_factory, f)
            if who.authenticated:
                names = queries.patient_names(self.session_factory, self.data_dir, [r.id for r in rows])
                for row in rows:
                    row.patient_name = names.get(row.id)
            return rows, total, queries.destination_names(self.session_factory, self.config)

        rows, total, destinations = await run_in_threadpool(load)
        pages = max(1, -(-total // queries.PAGE_SIZE))
        return self.render(request, who, "studies.html", rows=rows, total=total, f=f, pages=pages,
                           states=queries.STATES, destinations=destinations, triage=queries.TRIAGE)

    async def study(self, request: Request, who: Identity) -> Response:
        uid = request.path_params["uid"]
        detail = await run_in_threadpool(queries.study_detail, self.session_factory, self.config, uid)
        if detail is None:
            return self.render(request, who, "missing.html", status=404, what=f"study {uid}")
        name = None
        if who.authenticated:
            names = await run_in_threadpool(queries.patient_names, self.session_factory, self.data_dir,
                                            [detail.study.id])
            name = names.get(detail.study.id)
        return self.render(request, who, "study.html", d=detail, patient_name=name,
                           newest_job=detail.jobs[-1] if detail.jobs else None)

    async def page_image(self, request: Request, who: Identity) -> Response:
        uid, job_id, number = request.path_params["uid"], request.path_params["job"], request.path_params["n"]
        if not is_valid_uid(uid):
            return PlainTextResponse("not found\n", status_code=404)
        pages = await run_in_threadpool(queries.page_files, self.data_dir, uid, job_id)
        page = next((p for p in pages if p.number == number), None)
        if page is None:
            return PlainTextResponse("not found\n", status_code=404)
        png = await run_in_threadpool(queries.render_page_png, page.file)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def failures(self, request: Request, who: Identity) -> Response:
        jobs, dead = await run_in_threadpool(queries.failures, self.session_factory)
        return self.render(request, who, "failures.html", job_groups=jobs, dead_groups=dead)

    async def feedback(self, request: Request, who: Identity) -> Response:
        period = request.query_params.get("period", "week")
        if period not in ("day", "week"):
            return PlainTextResponse("bad period: day or week\n", status_code=400)

        def load() -> dict[str, Any]:
            factory = self.session_factory
            return {"rows": feedback_report.agreement_table(factory),
                    "over_time": feedback_report.agreement_over_time(factory, period),
                    "disagreements": feedback_report.disagreements(factory),
                    "counts": feedback_report.message_counts(factory),
                    "attention": feedback_report.messages_needing_attention(factory)}

        data = await run_in_threadpool(load)
        live = self.live() if self.live else {}
        return self.render(request, who, "feedback.html", listening=live.get("feedback"),
                           enabled=self.config.feedback.enabled, **data)

    # -- actions ---------------------------------------------------------------------------------------------
    async def do_retry(self, request: Request, who: Identity, form: Any) -> str:
        job_id = request.path_params["job"]
        return f"job {job_id}: " + await run_in_threadpool(actions.retry, self.session_factory, job_id, who.user)

    async def do_complete(self, request: Request, who: Identity, form: Any) -> str:
        return await run_in_threadpool(actions.force_complete, self.session_factory, request.path_params["uid"],
                                       who.user)

    async def do_resend(self, request: Request, who: Identity, form: Any) -> str:
        return await run_in_threadpool(actions.resend, self.session_factory, self.config,
                                       request.path_params["job"], str(form.get("destination", "")), who.user)

    # -- login -----------------------------------------------------------------------------------------------
    async def login_form(self, request: Request) -> Response:
        import secrets

        if not self.auth.enabled:
            return RedirectResponse("/", status_code=303)
        token = secrets.token_urlsafe(32)
        response = self.render(request, None, "login.html", login_csrf=token, auth_type=self.auth.type,
                               next=_safe_next(request.query_params.get("next")), error="")
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", path="/login", max_age=900)
        return response

    async def login(self, request: Request) -> Response:
        if not self.auth.enabled:
            return RedirectResponse("/", status_code=303)
        form = await request.form()
        csrf = str(form.get("csrf_token", ""))
        if not self.same_origin(request) or not same_token(csrf, request.cookies.get(LOGIN_COOKIE)):
            return PlainTextResponse("refused: missing or invalid CSRF token\n", status_code=403)
        user = await run_in_threadpool(self.auth.check_login, str(form.get("user", "")), str(form.get("secret", "")))
        if user is None:
            LOG.warning("dashboard: failed login from %s", request.client.host if request.client else "?")
            return self.render(request, None, "login.html", status=401, login_csrf=csrf, auth_type=self.auth.type,
                               next=_safe_next(str(form.get("next", ""))), error="wrong credentials")
        session_id, _ = self.sessions.create(user)
        LOG.info("dashboard: %s logged in", user)
        redirect = RedirectResponse(_safe_next(str(form.get("next", ""))), status_code=303)
        self._set_session_cookie(redirect, session_id)
        redirect.delete_cookie(LOGIN_COOKIE, path="/login")
        return redirect

    async def logout(self, request: Request) -> Response:
        who = self.identify(request)
        if who is None:
            return self.refuse(request)
        form = await request.form()
        if not await self.csrf_ok(request, who, form):
            return PlainTextResponse("refused: missing or invalid CSRF token\n", status_code=403)
        self.sessions.drop(who.session_id)
        response = RedirectResponse("/login" if self.auth.enabled else "/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    def app(self) -> Starlette:
        routes = [
            Route("/", self.page(self.overview)),
            Route("/api/status", self.page(self.status_json)),
            Route("/studies", self.page(self.studies)),
            Route("/studies/{uid}", self.page(self.study)),
            Route("/studies/{uid}/jobs/{job:int}/pages/{n:int}.png", self.page(self.page_image)),
            Route("/studies/{uid}/complete", self.action(self.do_complete), methods=["POST"]),
            Route("/jobs/{job:int}/retry", self.action(self.do_retry), methods=["POST"]),
            Route("/jobs/{job:int}/resend", self.action(self.do_resend), methods=["POST"]),
            Route("/failures", self.page(self.failures)),
            Route("/feedback", self.page(self.feedback)),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Mount("/static", StaticFiles(packages=[("dicomnode.dashboard", "static")]), name="static"),
        ]
        return Starlette(routes=routes)

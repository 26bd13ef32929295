"""`docent run --check`: what would stop the bot from starting, found before it starts.

Each check says what it looked at and, when it fails, what to do. Nothing here prints the token or a
database password, and nothing is downloaded: a model that is not pulled yet is reported, not fetched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
from sqlalchemy import make_url, text

from bot.config import Settings
from bot.db.session import create_engine
from lm.hub import HubError, canonical, is_pulled, resolve

TOKEN = re.compile(r"\d{5,}:[A-Za-z0-9_-]{30,}")  # "<bot id>:<secret>", as @BotFather hands it out
SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")  # what the Bot API accepts as a webhook secret_token


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def check_telegram(settings: Settings) -> list[Check]:
    tg = settings.telegram
    if not tg.token:
        token = Check("token", False, "not set: DOCENT_TELEGRAM_TOKEN or [telegram] token")
    elif not TOKEN.fullmatch(tg.token):
        token = Check("token", False, "set, but not in the form <digits>:<secret> that @BotFather gives")
    else:
        token = Check("token", True, "set, in the right form")
    checks = [token]
    if tg.mode == "polling":
        checks.append(Check("mode", True, "polling"))
    elif tg.mode == "webhook":
        url_ok = tg.webhook_url.startswith("https://")
        checks.append(Check("webhook url", url_ok, tg.webhook_url if url_ok else
                            f"{tg.webhook_url or 'not set'}: Telegram only calls https:// URLs"))
        checks.append(Check("webhook secret", bool(SECRET.fullmatch(tg.webhook_secret)),
                            "set" if SECRET.fullmatch(tg.webhook_secret) else
                            "not set, or not 1-256 of A-Z a-z 0-9 _ -"))
    else:
        checks.append(Check("mode", False, f"{tg.mode!r}: must be polling or webhook"))
    return checks


async def check_bot_api(settings: Settings, timeout_s: float = 10.0) -> Check:
    """Ask the configured Bot API who the token belongs to (getMe), as the bot's start does: an unreachable URL
    or a refused token fails here, not later. httpx, not python-telegram-bot: the services know no Telegram."""
    tg = settings.telegram
    where = tg.api_url.rstrip("/")
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.post(f"{tg.api_url}{tg.token}/getMe")
        body = response.json()
    except httpx.HTTPError as e:
        reason = str(e).replace(tg.token, "<token>").splitlines()[0][:200] if str(e) else "no answer"
        return Check("bot api", False, f"{where} could not be reached ({type(e).__name__}: {reason}); "
                                       "check [telegram] api_url and the network")
    except ValueError:  # not JSON: something else answers at that address
        return Check("bot api", False, f"{where} answered HTTP {response.status_code}, not as a Bot API does; "
                                       "check [telegram] api_url")
    if response.status_code == 401 or (isinstance(body, dict) and body.get("error_code") == 401):
        return Check("bot api", False, f"{where} refused the token (401 Unauthorized): ask @BotFather for it again")
    if not (isinstance(body, dict) and body.get("ok") and isinstance(body.get("result"), dict)):
        description = str(body.get("description", "")) if isinstance(body, dict) else ""
        return Check("bot api", False, f"{where} answered getMe with HTTP {response.status_code} "
                                       f"{description[:200]}".rstrip())
    return Check("bot api", True, f"{where}: this token is @{body['result'].get('username', '?')}")


async def check_database(settings: Settings) -> Check:
    shown = make_url(settings.database_url).render_as_string(hide_password=True)
    try:
        engine = create_engine(settings.database_url)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()
    except Exception as e:  # any driver's error: say which database and why, and go on with the others
        return Check("database", False, f"{shown}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return Check("database", True, f"{shown} reachable (migrated at start)")


def check_model_files(what: str, name: str, settings: Settings) -> Check:

    if canonical(name) is not None:  # resolve() would pull it: only say whether it is there
        if is_pulled(name, settings.cache_dir):
            return Check(what, True, f"{name}, pulled")
        return Check(what, False, f"{name} is not pulled yet: run docent model pull {name}")
    try:
        return Check(what, True, str(resolve(name, settings.cache_dir)))
    except HubError as e:
        return Check(what, False, str(e))


def check_model_loads(settings: Settings) -> Check:
    from bot.services.lm_gateway import ChatModel  # lazy: only the local model's check loads it

    try:
        model = ChatModel.load(settings)
    except Exception as e:  # a corrupt or foreign file: the message is the useful part
        return Check("chat model loads", False, f"{type(e).__name__}: {e}")
    model.close(wait=True, cancel=True)  # its scheduler thread must not outlive the check (see ChatModel.close)
    return Check("chat model loads", True, f"{model.context_tokens} tokens of context")


async def check_workers(settings: Settings, timeout_s: float = 10.0) -> list[Check]:
    """`[model] backend = "openai"`: each worker URL answers /models, as a replica's first reply will ask it."""
    from bot.services.remote_model import worker_urls  # lazy: loads aiohttp and the gateway, only for workers

    urls = worker_urls(settings.model.url)
    if not urls:
        return [Check("model workers", False, 'backend = "openai" needs [model] url (DOCENT_MODEL_URL), '
                                              "e.g. http://host:8000/v1")]
    checks = []
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        for url in urls:
            try:
                response = (await client.get(url + "/models")).raise_for_status()
                served = [m.get("id", "?") for m in response.json().get("data") or []]
            except (httpx.HTTPError, ValueError, AttributeError) as e:
                reason = str(e).splitlines()[0][:200] if str(e) else "no answer"
                checks.append(Check("model worker", False, f"{url}/models: {type(e).__name__}: {reason}; is "
                                                           "`docent serve` (or another OpenAI-compatible server) "
                                                           "running there?"))
                continue
            checks.append(Check("model worker", bool(served), f"{url} serves {', '.join(served)}" if served
                                else f"{url}/models lists no model"))
    return checks


async def preflight(settings: Settings) -> list[Check]:
    """Every check, in the order a start-up would meet them. With model workers, the workers answer instead of
    a local model loading (a replica has no model files)."""
    checks = check_telegram(settings)
    if checks[0].ok:  # a token in the right form: does the Bot API take it?
        checks.append(await check_bot_api(settings))
    checks.append(await check_database(settings))
    if settings.model.backend == "openai":
        checks.extend(await check_workers(settings))
    elif settings.model.backend != "local":
        checks.append(Check("model backend", False, f'{settings.model.backend!r}: must be "local" or "openai"'))
    else:
        chat = check_model_files("chat model", settings.model.name, settings)
        checks.append(chat)
        if chat.ok:
            checks.append(check_model_loads(settings))
    checks.append(check_model_files("encoder", settings.documents.encoder, settings))
    return checks

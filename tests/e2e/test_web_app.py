"""The reference web app (web/) in a real browser: Debian's Chromium driven by Playwright, against
`make run` and the test Dovecot, as a recruiter uses it. Each test saves its screen: to pytest's
temporary folder, or with MAILSYNC_UPDATE_SCREENS=1 (`make screens`) to docs/screens/, the README's.
One stack and one browser for the module."""

from __future__ import annotations

import datetime as dt
import email.policy
import email.utils
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import boto3
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from devstack.dovecot import DovecotServer, MailUser, make_message
from tests.e2e.conftest import ROOT, Running, base_env, free_port, make_token, start, stop
from tests.fixtures.oauth_server import CLIENT_ID, CLIENT_SECRET, RunningServer, run_server

CHROMIUM = Path("/usr/bin/chromium")
DOCS_SCREENS = ROOT / "docs" / "screens"
# As the machine notes say: without the networking switches Chromium tries Google's hosts at start.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Every wait on the page is bounded; the API answers in milliseconds, a sync in a few seconds.
WAIT_MS = 30_000
OAUTH_SECRET_NAME = "mailsync-web-oauth"
DESKTOP = {"width": 1100, "height": 900}
expect.set_options(timeout=WAIT_MS)
Screenshot = Callable[[Page, str], None]


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"api": free_port(), "moto": free_port()}


@pytest.fixture(scope="module")
def google(ports: dict[str, int]) -> Iterator[RunningServer]:
    """A local authorization server in Google's place (tests/fixtures/oauth_server.py)."""
    yield from run_server(f"http://127.0.0.1:{ports['api']}/v1/oauth/callback", approve_as="")


@pytest.fixture(scope="module")
def stack(dovecot: DovecotServer, ports: dict[str, int], google: RunningServer) -> Iterator[Running]:
    origin = f"http://127.0.0.1:{ports['api']}"
    env = base_env(
        MAILSYNC_PORT=str(ports["api"]),
        MAILSYNC_MOTO_PORT=str(ports["moto"]),
        MAILSYNC_EXTRA_CA_FILE=str(dovecot.ca_file),
        # Connect Google goes to the local authorization server and back to this stack's app.
        MAILSYNC_OAUTH_GOOGLE_CLIENT_ID=CLIENT_ID,
        MAILSYNC_OAUTH_GOOGLE_ISSUER=google.url,
        MAILSYNC_OAUTH_GOOGLE_AUTHORIZE_URL=f"{google.url}/authorize",
        MAILSYNC_OAUTH_GOOGLE_TOKEN_URL=f"{google.url}/token",
        MAILSYNC_OAUTH_GOOGLE_REVOKE_URL=f"{google.url}/revoke",
        MAILSYNC_OAUTH_GOOGLE_USERINFO_URL="",
        MAILSYNC_OAUTH_GOOGLE_IMAP_HOST="127.0.0.1",
        MAILSYNC_OAUTH_REDIRECT_URI=f"{origin}/v1/oauth/callback",
        MAILSYNC_OAUTH_RETURN_ORIGINS=origin,
        # A secret's name is a SecretId as good as its ARN; it is created once moto runs.
        MAILSYNC_OAUTH_CLIENT_SECRET_ARN=OAUTH_SECRET_NAME,
    )
    running = start("run", env)
    try:
        secret = {"google_client_secret": CLIENT_SECRET, "state_key": secrets.token_urlsafe(32)}
        boto3.client(
            "secretsmanager",
            endpoint_url=f"http://127.0.0.1:{ports['moto']}",
            region_name="eu-west-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # moto takes any
        ).create_secret(Name=OAUTH_SECRET_NAME, SecretString=json.dumps(secret))
        yield running
    finally:
        stop(running)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium", pytrace=False)
    with sync_playwright() as playwright:
        # Playwright's launch() gives the browser a new, empty profile directory of its own.
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def open_page(browser: Browser, locale: str = "en-GB") -> Page:
    context = browser.new_context(locale=locale, viewport=DESKTOP)
    context.set_default_timeout(WAIT_MS)
    return context.new_page()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    opened = open_page(browser)
    try:
        yield opened
    finally:
        opened.context.close()


def sign_in(page: Page, stack: Running, user: str, tenant: str = "acme", role: str = "user") -> None:
    """The local stack's sign-in form (config.json turns it on; a deployment has none)."""
    page.goto(f"{stack.url}/app/")
    page.locator("#local-user").fill(user)
    page.locator("#local-tenant").fill(tenant)
    page.locator("#local-role").select_option(role)
    page.locator("#local-user").press("Enter")
    expect(page.locator("#host")).to_be_visible()


@pytest.fixture(scope="module")
def screens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screens go: the README's (docs/screens) only when asked for (`make screens`),
    otherwise a temporary folder, so a test run leaves the developer's git tree as it was."""
    if os.environ.get("MAILSYNC_UPDATE_SCREENS") == "1":
        DOCS_SCREENS.mkdir(parents=True, exist_ok=True)
        return DOCS_SCREENS
    return tmp_path_factory.mktemp("screens")


@pytest.fixture
def screenshot(screens: Path) -> Screenshot:
    def take(page: Page, name: str) -> None:
        page.screenshot(path=str(screens / f"{name}.png"), full_page=True)

    return take


def fill_settings(page: Page, mail_user: MailUser, password: str) -> None:
    page.get_by_label("Mailserver", exact=True).fill("127.0.0.1")
    page.get_by_label("Port (optional)").fill(str(mail_user.imaps_port))
    page.get_by_label("User name").fill(mail_user.username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("radio", name="SSL").check()


UNLABELLED = """[...document.querySelectorAll('input, select, textarea')]
    .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
    .map((e) => e.id || e.name || e.outerHTML)"""


def unlabelled(page: Page) -> list[str]:
    """Form fields without a label (every field has one: screen readers and clicks on the text)."""
    return page.evaluate(UNLABELLED)


def with_cv(subject: str, sender: str, date: dt.datetime) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"], msg["To"], msg["Subject"] = sender, "recruiter@example.com", subject
    msg["Date"], msg["Message-ID"] = email.utils.format_datetime(date), email.utils.make_msgid(domain="mailsync.test")
    msg.set_content("My CV is attached.\n")
    msg.add_attachment(b"%PDF-1.4\n%%EOF\n", maintype="application", subtype="pdf", filename="cv.pdf")
    return bytes(msg)


def wait_until(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"not within {timeout} s: {what}")


def test_settings_folders_mail_arriving_and_read_on_the_server(
    stack: Running, page: Page, dovecot: DovecotServer, screenshot: Screenshot
) -> None:
    mail_user = dovecot.add_user()
    # The module has a stack of its own: fixed CRM user names are new in it (and read well on the screens).
    user = "alice"
    sign_in(page, stack, user)

    fill_settings(page, mail_user, mail_user.password)
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_text("Saved. Login to the mailbox succeeded.")).to_be_visible()
    # The password is write-only: the field is empty again, with "saved" in its place.
    expect(page.get_by_label("Password", exact=True)).to_have_value("")
    expect(page.get_by_label("Password", exact=True)).to_have_attribute("placeholder", "saved")
    screenshot(page, "settings")

    page.get_by_role("button", name="Edit folders").click()
    # The server's folders, live, with the suggestion preselected per CRM folder.
    expect(page.locator("#map-inbox")).to_have_value("INBOX")
    expect(page.locator("#map-sent")).to_have_value("Sent")
    options = page.locator("#map-drafts option").all_inner_texts()
    assert "Entwürfe" in options, options
    page.locator("#map-drafts").select_option("Entwürfe")
    screenshot(page, "folders")
    assert unlabelled(page) == []
    page.get_by_role("button", name="Save folders").click()
    expect(page.get_by_text("Folders saved.")).to_be_visible()
    code, saved = stack.request("GET", "/v1/users/me/folder-map", make_token(user, "acme"))
    assert code == 200 and saved["saved"] and saved["folders"]["drafts"] == "Entwürfe", saved

    now = dt.datetime.now(dt.UTC)
    with mail_user.client("ssl") as imap:
        older = make_message(subject="Interview on Tuesday", sender="Petra <petra@bureau.example>")
        imap.append("INBOX", older, internal_date=now - dt.timedelta(hours=2))
        newer = with_cv("Application: senior recruiter", "Jan de Vries <jan@klant.example>", now)
        imap.append("INBOX", newer, internal_date=now - dt.timedelta(minutes=5))
    page.get_by_role("link", name="Mailbox").click()
    page.get_by_role("button", name="Sync now").click()
    row = page.locator("li.message", has_text="Application: senior recruiter")
    expect(row).to_be_visible()
    expect(row).to_have_class(re.compile(r"\bunread\b"))
    expect(row.get_by_role("img", name="Has attachments")).to_be_visible()
    expect(page.get_by_role("button", name=re.compile(r"^Inbox 2 Messages$"))).to_be_visible()
    # Newest first.
    expect(page.locator("li.message .subject")).to_have_text(
        [re.compile("Application: senior recruiter$"), re.compile("Interview on Tuesday$")]
    )

    row.get_by_role("button", name="Mark read").click()
    expect(row.get_by_role("button", name="Mark unread")).to_be_visible()
    with mail_user.client("ssl") as imap:
        uid = imap.uids("INBOX")[-1]
        wait_until(lambda: "\\Seen" in imap.flags("INBOX", uid), "\\Seen on the server")

    row.get_by_role("button", name="Mark confidential").click()
    expect(row.get_by_role("img", name="Confidential")).to_be_visible()
    screenshot(page, "mailbox")
    assert unlabelled(page) == []

    # Move to another mapped folder, then delete from there: both reach the server.
    other = page.locator("li.message", has_text="Interview on Tuesday")
    other.get_by_label("Move to").select_option(label="Archive")
    other.get_by_role("button", name="Move").click()
    expect(other).to_have_count(0)
    with mail_user.client("ssl") as imap:
        wait_until(lambda: len(imap.uids("Archive")) == 1, "the message in Archive on the server")
    page.get_by_role("button", name=re.compile(r"^Archive \d+ Messages$")).click()
    archived = page.locator("li.message", has_text="Interview on Tuesday")
    archived.get_by_role("button", name="Delete").click()
    expect(archived).to_have_count(0)
    with mail_user.client("ssl") as imap:
        wait_until(lambda: len(imap.uids("Trash")) == 1 and not imap.uids("Archive"), "the message in Trash")

    page.get_by_label("E-mail address").fill("jan@klant.example")
    page.get_by_role("button", name="Search").click()
    expect(page.locator(".dossier li", has_text="Application: senior recruiter")).to_be_visible()

    # 360 px wide (a phone): everything stacks, nothing runs off the side.
    page.set_viewport_size({"width": 360, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    screenshot(page, "mailbox-360")


def test_a_wrong_password_is_named_in_the_help_pages_words(
    stack: Running, page: Page, dovecot: DovecotServer, screenshot: Screenshot
) -> None:
    mail_user = dovecot.add_user()
    sign_in(page, stack, "bob")
    fill_settings(page, mail_user, "not-the-password")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_role("alert")).to_have_text("Login to mailbox failed: check user name and password")
    screenshot(page, "wrong-password")


def test_keep_a_copy_is_for_pop_only_and_none_is_offered_where_allowed(stack: Running, page: Page) -> None:
    sign_in(page, stack, "carol")
    keep, remove_after = page.get_by_label("Keep a copy of fetched e-mails"), page.locator("#remove_after_days")
    expect(keep).to_be_disabled()
    expect(remove_after).to_be_disabled()
    page.get_by_role("radio", name="POP").check()
    expect(keep).to_be_enabled()
    expect(remove_after).to_be_enabled()
    keep.uncheck()
    expect(remove_after).to_be_disabled()
    page.get_by_role("radio", name="IMAP").check()
    expect(keep).to_be_disabled()
    # The local stack allows security None (MAILSYNC_ALLOW_INSECURE); /v1/deployment says so.
    expect(page.get_by_role("radio", name="None")).to_be_visible()


def test_a_pop_mailbox_fetches_into_the_inbox_and_has_no_folders_to_map(
    stack: Running, page: Page, dovecot: DovecotServer
) -> None:
    mail_user = dovecot.add_user()
    with mail_user.client("ssl") as imap:
        imap.append("INBOX", make_message(subject="Fetched by POP", sender="Petra <petra@bureau.example>"))
    sign_in(page, stack, "femke")
    fill_settings(page, mail_user, mail_user.password)
    page.get_by_label("Port (optional)").fill(str(mail_user.pop3s_port))
    page.get_by_role("radio", name="POP").check()
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_text("Saved. New mail is fetched into the Inbox; POP has no folders to map.")).to_be_visible()
    expect(page.get_by_role("button", name="Edit folders")).to_be_disabled()
    expect(page.get_by_text("A POP mailbox has no folders: its mail arrives in the Inbox.")).to_be_visible()
    page.get_by_role("link", name="Mailbox").click()
    page.get_by_role("button", name="Sync now").click()
    expect(page.locator("li.message", has_text="Fetched by POP")).to_be_visible()
    # Kept on the server: Keep a copy is on unless the user turns it off.
    pop = mail_user.pop3("ssl")
    try:
        assert pop.stat()[0] == 1
    finally:
        pop.quit()


def test_dutch_from_the_browser_switchable_and_usable_by_keyboard(
    stack: Running, browser: Browser, screenshot: Screenshot
) -> None:
    page = open_page(browser, locale="nl-NL")
    try:
        sign_in(page, stack, "daan")
        for label in ("Mailserver", "Gebruikersnaam", "Wachtwoord", "Beveiliging", "Type mailserver"):
            expect(page.get_by_text(label, exact=True).first).to_be_visible()
        expect(page.get_by_label("Kopie van opgehaalde e-mails op de mailserver bewaren")).to_be_disabled()
        screenshot(page, "settings-nl")
        page.set_viewport_size({"width": 360, "height": 800})  # the longer Dutch labels wrap, nothing overflows
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        page.set_viewport_size(DESKTOP)

        # Keyboard only: Tab walks the form in reading order.
        page.locator("#host").focus()
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "port"
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "username"

        page.get_by_label("Taal").select_option("en")
        expect(page.get_by_label("User name")).to_be_visible()
        assert page.evaluate("document.documentElement.lang") == "en"
    finally:
        page.context.close()


def test_connect_google_runs_the_consent_and_comes_back_connected(
    stack: Running, page: Page, google: RunningServer, screenshot: Screenshot
) -> None:
    google.server.approve_as = "frank@gmail.example"
    sign_in(page, stack, "frank")
    expect(page.get_by_role("button", name="Connect Microsoft")).to_be_disabled()  # no app registered here
    page.get_by_role("button", name="Connect Google").click()
    # The browser went to the provider, was approved, came back through the API's callback, and
    # the app finished the consent with this user's token (POST /v1/oauth/finish).
    expect(page.get_by_text("Your mailbox is connected.")).to_be_visible()
    expect(page.get_by_text(re.compile(r"^Connected with Google on "))).to_be_visible()
    assert "result=" not in page.url and "oauth_code" not in page.url  # the app tidies the address
    expect(page.get_by_label("User name")).to_have_value("frank@gmail.example")
    screenshot(page, "connected-google")
    code, saved = stack.request("GET", "/v1/users/me/mail-settings", make_token("frank", "acme"))
    assert code == 200 and (saved["auth"], saved["provider"]) == ("oauth2", "google"), saved


def test_a_refused_token_signs_out_and_says_so(stack: Running, page: Page) -> None:
    # In the document before the app reads it: Chromium commits a sessionStorage write made just
    # before a reload asynchronously, and the reloaded app sometimes started without the token
    # (CI, 2026-12-02: the sign-in form, no alert).
    page.add_init_script("sessionStorage.setItem('mailsync.token', 'not.a.token')")
    page.goto(f"{stack.url}/app/")
    expect(page.get_by_role("alert")).to_have_text("Your sign-in has expired: sign in again.")
    expect(page.locator("#local-user")).to_be_visible()


def test_an_admin_opens_a_colleagues_settings(stack: Running, page: Page, dovecot: DovecotServer) -> None:
    mail_user = dovecot.add_user()
    colleague = "erik"
    body = {"host": "127.0.0.1", "port": mail_user.imaps_port, "username": mail_user.username, "password": "x1"}
    assert stack.request("PUT", "/v1/users/me/mail-settings", make_token(colleague, "acme"), body)[0] == 201

    outsider = {**body, "username": "outsider"}
    assert stack.request("PUT", "/v1/users/me/mail-settings", make_token("olga", "globex"), outsider)[0] == 201

    sign_in(page, stack, "boss", role="admin")
    picker = page.get_by_label("User of your tenant")
    # The select lists the tenant's users with settings (GET /v1/users), never another tenant's.
    expect(picker.locator(f'option[value="{colleague}"]')).to_have_text(f"{colleague} ({mail_user.username})")
    assert "olga" not in picker.locator("option").evaluate_all("options => options.map(o => o.value)")
    assert unlabelled(page) == []
    # By keyboard: pick, Tab to Open, Enter.
    picker.focus()
    picker.select_option(colleague)
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_text(f"Settings of {colleague}")).to_be_visible()
    expect(page.get_by_label("User name")).to_have_value(mail_user.username)

    # A colleague without settings yet is in no list: their id is typed.
    page.get_by_label("Or a user id (a colleague without settings yet)").fill("newbie")
    page.get_by_label("Or a user id (a colleague without settings yet)").press("Enter")
    expect(page.get_by_text("Settings of newbie")).to_be_visible()
    expect(page.get_by_label("User name")).to_have_value("")
    expect(picker).to_have_value("newbie")


def test_screens_are_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("settings", "folders", "mailbox", "settings-nl"):
        assert f"docs/screens/{name}.png" in readme, name
    # `make screens` refreshes every screen the README shows, and takes none it does not.
    shown = set(re.findall(r"docs/screens/([\w-]+)\.png", readme))
    taken = set(re.findall(r'screenshot\(page, "([\w-]+)"\)', Path(__file__).read_text(encoding="utf-8")))
    assert shown == taken


def test_the_first_sync_bar_adds_up_the_folders_and_goes_when_the_first_sync_is_done(
    stack: Running, page: Page, dovecot: DovecotServer
) -> None:
    mail_user = dovecot.add_user()
    user = "gerda"
    token = make_token(user, "acme")
    settings = {"host": "127.0.0.1", "port": mail_user.imaps_port, "username": mail_user.username}
    settings["password"] = mail_user.password
    assert stack.request("PUT", "/v1/users/me/mail-settings", token, settings)[0] == 201
    assert stack.request("PUT", "/v1/users/me/folder-map", token, {"inbox": "INBOX", "sent": "Sent"})[0] == 200

    # A real first sync runs for seconds at a pace no test can time: the status the app polls is the
    # API's real answer with only the folders' first_sync set from here.
    progress = {"INBOX": {"total": 200, "done": 40}, "Sent": {"total": 50, "done": 10}}
    served: list[dict] = []

    def answer(route: Route) -> None:
        real = route.fetch()
        body = real.json()
        for folder in body["folders"]:
            folder["first_sync"] = progress.get(folder["server_folder"])
        served.append(body)
        route.fulfill(response=real, json=body)

    page.route("**/v1/users/*/sync-status", answer)
    sign_in(page, stack, user)
    page.get_by_role("link", name="Mailbox").click()

    # Both folders' progress in one bar: 40 + 10 of 200 + 50, in words for the screen reader too.
    bar = page.get_by_role("progressbar", name="First sync: 50 of 250 e-mails")
    expect(bar).to_be_visible()
    expect(bar).to_have_js_property("value", 50)
    expect(bar).to_have_js_property("max", 250)
    assert sorted(f["server_folder"] for f in served[-1]["folders"]) == ["INBOX", "Sent"], served[-1]
    page.get_by_label("Language").select_option("nl")
    expect(page.get_by_role("progressbar", name="Eerste synchronisatie: 50 van 250 e-mails")).to_be_visible()
    page.get_by_label("Taal").select_option("en")

    # The first sync is done: the status has no first_sync any more (set here too, whatever the sync
    # Sync now starts reports), and the bar goes with the status that Sync now asks for at once.
    progress.clear()
    polled = len(served)
    page.get_by_role("button", name="Sync now").click()
    expect(page.locator("#first-sync")).to_have_count(0)
    assert len(served) > polled
    assert all(f["first_sync"] is None for f in served[-1]["folders"]), served[-1]

"""Generate the sample support-ticket data set (``sample_data/tickets.jsonl``).

What it makes
-------------
1,200 synthetic customer-support tickets, as a SaaS help desk would receive
them, one JSON object per line (UTF-8, ``\\n`` line endings, a final newline)::

    {"id": "T000001", "subject": "...", "body": "...",
     "customer": {"name": "...", "tier": "free"|"pro"|"enterprise"},
     "channel": "email"|"chat"|"web"|"phone",
     "created_at": "2024-01-02T09:14:07Z", "language": "en",
     "label": "bug"|"feature"|"billing"|"other"}

``label`` is the gold label a human triager would give.  The label mix is
fixed at 35% bug, 20% feature, 25% billing and 20% other (shuffled).  Each
label has 30-odd subject/body templates whose ``<<slot>>`` markers are filled
from pools of product areas, error codes, browsers, operating systems, plans,
amounts in several currencies, dates, names and so on.  On top of that the
generator varies greetings, sign-offs and tone (polite, terse, angry), adds
optional extra paragraphs, formats phone tickets as agent notes, and puts
typos into a few tickets.  Some bodies quote JSON, shell commands or stack
traces, some contain non-ASCII text (accents, emoji, the euro sign), some
contain literal braces such as ``{0.__class__}``, ``{{x}}``, ``{name}`` or
``${HOME}`` (a runner must send those verbatim, never ``str.format`` them),
and a few are deliberately ambiguous (a double charge caused by a checkout
error is ``billing``; an invoice PDF that fails with a 500 is ``bug``).

How to run it
-------------
From the repository root::

    python sample_data/make_tickets.py                  # rewrites sample_data/tickets.jsonl
    python sample_data/make_tickets.py --out /tmp/t.jsonl --count 50 --seed 7

Only the standard library is used and all randomness comes from one seeded
``random.Random``, so the same ``--seed`` and ``--count`` always give the
same bytes; the committed file is the output of the defaults, and
``tests/test_sample_data.py`` checks that regenerating reproduces it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import random
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

DEFAULT_SEED = 20240117
DEFAULT_COUNT = 1200
DEFAULT_OUT = Path(__file__).resolve().parent / "tickets.jsonl"

LABEL_SHARES = (("bug", 0.35), ("feature", 0.20), ("billing", 0.25), ("other", 0.20))
CHANNELS = (("email", 45), ("web", 25), ("chat", 20), ("phone", 10))
START = _dt.datetime(2024, 1, 2, tzinfo=_dt.timezone.utc)
END = _dt.datetime(2024, 3, 29, tzinfo=_dt.timezone.utc)

# --------------------------------------------------------------------------
# Slot pools
# --------------------------------------------------------------------------

FIRST_NAMES = [
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Mateo", "Sofia", "Lucas", "Mia",
    "Ethan", "Chloé", "José", "Zoë", "Jürgen", "François", "Søren", "Łukasz",
    "Aoife", "Siobhán", "Priya", "Arjun", "Wei", "Yuki", "Hiroshi", "Fatima",
    "Omar", "Ingrid", "Björn", "Camila", "Diego", "Hannah", "Tom", "Grace",
    "Kwame", "Amara", "Nikolai", "Elena", "Raj", "Sarah", "David", "Maria",
    "James", "Anna", "Michael", "Laura", "Pedro", "Inês", "Renée", "Agnieszka",
]
LAST_NAMES = [
    "Smith", "Johnson", "Williams", "Brown", "García", "Martínez", "Müller",
    "Schmidt", "Dubois", "Lefèvre", "Rossi", "Bianchi", "Nowak", "Kowalski",
    "Jensen", "Nielsen", "O'Brien", "Murphy", "Patel", "Sharma", "Chen",
    "Wang", "Tanaka", "Sato", "Haddad", "Okafor", "Mensah", "Ivanova",
    "Andersson", "Lindqvist", "Silva", "Costa", "Nguyen", "Kim", "Park",
    "Cohen", "Fischer", "Weber", "Novák", "Yılmaz", "Brennan", "Clarke",
]
COMPANIES = [
    "Acme Logistics", "Northwind Traders", "Blue Harbor Dental", "Fjörd Analytics",
    "Café Lumière", "Kowalski & Sons", "Zenbyte", "Orbital Freight", "Brightline Legal",
    "Pinecrest Realty", "Helios Solar GmbH", "Tiny Tiger Games", "Maple & Co.",
    "Nordlys AS", "Quantum Pet Supplies", "Redwood Clinics", "Studio Mañana",
    "Greenleaf Grocers", "Vector Labs", "Bäckerei Sonnenschein", "Atlas Insurance",
]
BUG_AREAS = [
    "dashboard", "CSV export", "PDF export", "reports page", "search", "ticket list",
    "notifications panel", "user management page", "integrations page", "audit log",
    "file uploads", "calendar view", "analytics tab", "custom fields editor",
    "team workspace settings", "onboarding wizard", "kanban board", "inbox view",
    "invoices page", "automation rules editor",
]
FEATURE_TOPICS = [
    "a dark mode", "native Excel (.xlsx) export", "keyboard shortcuts", "saved filters",
    "custom user roles", "scheduled email reports", "a Gantt/timeline view",
    "an offline mode in the mobile app", "a Microsoft Teams integration",
    "a Google Sheets integration", "bulk editing of tickets", "an undo button",
    "a Terraform provider", "a GraphQL API", "custom domains for the help center",
    "WebAuthn / hardware security keys for 2FA", "per-project notification settings",
    "recurring tasks", "a public status widget", "field-level permissions",
]
BROWSERS = [
    "Chrome 120", "Chrome 121", "Firefox 121", "Firefox ESR 115", "Safari 17.2",
    "Edge 120", "Brave 1.61", "Arc", "Opera 106",
]
OSES = [
    "Windows 11", "Windows 10", "macOS Sonoma 14.2", "macOS Ventura 13.6",
    "Ubuntu 22.04", "Fedora 39", "ChromeOS", "Debian 12",
]
DEVICES = [
    "iPhone 15 Pro, iOS 17.2", "iPhone 12, iOS 16.7", "Pixel 8, Android 14",
    "Samsung Galaxy S23, Android 14", "iPad Air, iPadOS 17.1", "OnePlus 11, Android 13",
    "Xiaomi Redmi Note 12, Android 13",
]
ERROR_CODES = [
    "HTTP 500", "502 Bad Gateway", "504 Gateway Timeout", "503 Service Unavailable",
    "ERR_CONNECTION_RESET", "error E1042", "error code 0x80070005", "422 Unprocessable Entity",
    "ECONNREFUSED", "ERR_TOO_MANY_REDIRECTS", "error 40013",
]
IDPS = ["Okta", "Azure AD", "Google Workspace", "OneLogin", "JumpCloud", "Keycloak", "Auth0"]
WEBHOOK_EVENTS = [
    "ticket.created", "ticket.updated", "invoice.paid", "user.invited",
    "comment.added", "project.archived",
]
TIMEZONES = ["Europe/Berlin", "Australia/Sydney", "America/Los_Angeles", "Asia/Kolkata", "Europe/London", "America/São_Paulo"]
MONTHS = ["January", "February", "March"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
AGENTS = ["Dana", "Marco", "Keisha", "Pavel", "Lin", "Rosa"]
PROMO_CODES = ["LAUNCH20", "NONPROFIT30", "BLACKFRIDAY", "WELCOME10", "SPRING24"]

# currency: (prefix, suffix, decimal separator, thousands separator)
CURRENCIES = [
    (("$", "", ".", ","), 45),
    (("€", "", ".", ","), 20),
    (("", " €", ",", "."), 10),
    (("£", "", ".", ","), 12),
    (("USD ", "", ".", ","), 5),
    (("CHF ", "", ".", "'"), 4),
    (("EUR ", "", ",", "."), 4),
]
PLAN_PRICES = {"Starter": 19, "Pro": 49, "Team": 99, "Business": 249, "Enterprise": 1200}
TIER_PLANS = {
    "free": ["Free", "Starter"],
    "pro": ["Pro", "Pro", "Team", "Business"],
    "enterprise": ["Enterprise", "Enterprise", "Business"],
}


def _pick(seq: Sequence[str]) -> Callable[[random.Random, dict], str]:
    return lambda rng, ctx: rng.choice(seq)


def _money(rng: random.Random, ctx: dict, value: float) -> str:
    cur = ctx.get("_currency")
    if cur is None:
        cur = rng.choices([c for c, _ in CURRENCIES], [w for _, w in CURRENCIES])[0]
        ctx["_currency"] = cur
    prefix, suffix, dec, thou = cur
    whole, cents = divmod(round(value * 100), 100)
    whole_s = f"{whole:,}".replace(",", thou)
    return f"{prefix}{whole_s}{dec}{cents:02d}{suffix}"


def _base_price(rng: random.Random, ctx: dict) -> float:
    if "_price" not in ctx:
        plan = ctx["plan"] if "plan" in ctx else _plan(rng, ctx)
        price = PLAN_PRICES.get(plan.split()[0], 29)
        seats = int(ctx.get("seats") or rng.choice([1, 1, 3, 5, 8, 12, 25]))
        if plan.split()[0] in ("Enterprise",):
            seats = 1
        annual = rng.random() < 0.3
        ctx["_price"] = price * seats * (10 if annual else 1)
    return ctx["_price"]


def _domain(company: str) -> str:
    ascii_name = company.translate(str.maketrans("öéñäü", "oenau"))
    return re.sub(r"[^a-z0-9]+", "", ascii_name.lower().split(" gmbh")[0]) + ".com"


def _plan(rng: random.Random, ctx: dict) -> str:
    if "plan" not in ctx:
        ctx["plan"] = rng.choice(TIER_PLANS[ctx["_tier"]])
    return ctx["plan"]


def _date(rng: random.Random, ctx: dict) -> str:
    d = ctx["_created"] - _dt.timedelta(days=rng.randint(1, 40))
    style = rng.randrange(5)
    if style == 0:
        return d.strftime("%Y-%m-%d")
    if style == 1:
        return f"{d.strftime('%B')} {d.day}"
    if style == 2:
        return d.strftime("%d/%m/%Y")
    if style == 3:
        return f"{d.day} {d.strftime('%b')}"
    return "last " + rng.choice(WEEKDAYS)


SLOTS: dict[str, Callable[[random.Random, dict], str]] = {
    "first": lambda rng, ctx: ctx["_name"].split()[0],
    "colleague": lambda rng, ctx: rng.choice([n for n in FIRST_NAMES if n != ctx["_name"].split()[0]]),
    "company": _pick(COMPANIES),
    "domain": lambda rng, ctx: _domain(ctx["company"] if "company" in ctx else rng.choice(COMPANIES)),
    "area": _pick(BUG_AREAS),
    "area2": _pick(BUG_AREAS),
    "topic": _pick(FEATURE_TOPICS),
    "topic2": _pick(FEATURE_TOPICS),
    "browser": _pick(BROWSERS),
    "browser2": lambda rng, ctx: rng.choice([b for b in BROWSERS if b != ctx.get("browser")]),
    "os": _pick(OSES),
    "device": lambda rng, ctx: rng.choice(
        [d for d in DEVICES if ctx.get("mobile", "") in d] or DEVICES),
    "mobile": _pick(["iOS", "Android", "iPadOS"]),
    "error_code": _pick(ERROR_CODES),
    "idp": _pick(IDPS),
    "event": _pick(WEBHOOK_EVENTS),
    "tz": _pick(TIMEZONES),
    "month": _pick(MONTHS),
    "weekday": _pick(WEEKDAYS),
    "agent": _pick(AGENTS),
    "promo": _pick(PROMO_CODES),
    "version": lambda rng, ctx: f"{rng.randint(4, 6)}.{rng.randint(0, 19)}.{rng.randint(0, 9)}",
    "n_rows": lambda rng, ctx: f"{rng.choice([5, 10, 20, 50, 100])},000",
    "size": lambda rng, ctx: str(rng.choice([10, 25, 50, 100, 200])),
    "seats": lambda rng, ctx: str(rng.choice([5, 8, 12, 15, 25, 40, 60, 120])),
    "seats_removed": lambda rng, ctx: str(rng.choice([2, 3, 4, 5, 10])),
    "limit": lambda rng, ctx: str(rng.choice([60, 120, 300, 600])),
    "num": lambda rng, ctx: str(rng.randint(10000, 99999)),
    "acct": lambda rng, ctx: f"ACC-{rng.randint(100000, 999999)}",
    "invoice": lambda rng, ctx: f"INV-2024-{rng.randint(100, 9999):04d}",
    "vat": lambda rng, ctx: rng.choice(["DE", "FR", "NL", "IE", "ES", "IT"]) + str(rng.randint(100000000, 999999999)),
    "plan": _plan,
    "plan_other": lambda rng, ctx: rng.choice([p for p in PLAN_PRICES if p != _plan(rng, ctx).split()[0]]),
    "amount": lambda rng, ctx: _money(rng, ctx, _base_price(rng, ctx)),
    "amount2": lambda rng, ctx: _money(rng, ctx, _base_price(rng, ctx) * rng.choice([1.15, 1.2, 1.25, 1.5])),
    "amount_small": lambda rng, ctx: _money(rng, ctx, rng.choice([4.99, 9.0, 12.5, 19.0, 23.8])),
    "date": _date,
    "date2": _date,
    "pct": lambda rng, ctx: str(rng.choice([10, 15, 20, 30, 50])),
    "hours": lambda rng, ctx: str(rng.choice([2, 3, 4, 6, 12])),
    "line": lambda rng, ctx: str(rng.randint(40, 900)),
    "ms": lambda rng, ctx: str(rng.choice([30, 45, 60, 90])),
}

# --------------------------------------------------------------------------
# Templates: (subjects, body).  One subject is picked at random; slots are
# written <<name>> (so literal braces in bodies never clash with them).
# --------------------------------------------------------------------------

Template = tuple[tuple[str, ...], str]

BUG_TEMPLATES: list[Template] = [
    (("<<area>> not loading", "Blank page on <<area>>", "Can't open the <<area>>"),
     "Since this morning the <<area>> just shows a blank white page. I tried <<browser>> on <<os>>, "
     "cleared the cache and cookies, same thing. The browser console shows <<error_code>>."),
    (("CSV export fails with 500", "Export broken for large data sets", "export not working"),
     "When I export more than <<n_rows>> rows to CSV the download fails with an HTTP 500. Smaller exports work fine. "
     "This started around <<date>>, we export weekly so it definitely worked before."),
    (("<<mobile>> app crashes on launch", "App crash after update", "Mobile app keeps crashing"),
     "The <<mobile>> app crashes right after the splash screen since the latest update (v<<version>>). "
     "I reinstalled it and restarted the phone, still crashes every time.\n\nDevice: <<device>>"),
    (("SSO login loop", "Stuck in redirect loop when signing in with <<idp>>", "URGENT: SSO broken for whole team"),
     "Our users get stuck in a redirect loop when signing in via SSO (<<idp>>). They land on your login page, get sent "
     "to <<idp>>, come back, and it starts all over again. Nothing changed on our side.\n\n"
     "This is blocking <<seats>> people from working. Please escalate."),
    (("API client raising KeyError", "API returns error object instead of data", "Intermittent API failures"),
     "Our nightly sync started failing a few days ago. Traceback:\n\n"
     "Traceback (most recent call last):\n"
     "  File \"sync.py\", line <<line>>, in <module>\n"
     "    resp = client.list_tickets(page=2)\n"
     "  File \"/opt/sync/client.py\", line 118, in list_tickets\n"
     "    return resp.json()[\"data\"]\n"
     "KeyError: 'data'\n\n"
     "The raw response body was:\n"
     "{\"error\": {\"code\": \"internal\", \"message\": \"unexpected error\", \"request_id\": \"req_<<num>>\"}}\n\n"
     "Status code 500. Retrying sometimes works."),
    (("Webhooks stopped firing", "No <<event>> webhooks since <<date>>", "webhook deliveries missing"),
     "Webhooks stopped firing for <<event>> events since <<date>>. The endpoint is up (the test ping from your settings "
     "page arrives fine) but real events never arrive, and the delivery log shows nothing at all."),
    (("Duplicate webhook deliveries", "Receiving every webhook 2-3 times"),
     "We're receiving every webhook two or three times with the same event id, a few seconds apart. Our handler is "
     "idempotent so it's not a disaster, but it's clearly wrong and it triples our load."),
    (("Email template shows {name} literally", "Placeholders not replaced in notification emails"),
     "In the notification email templates I use the {name} and {{company}} placeholders exactly as described in your "
     "docs, but the emails that actually go out contain the literal text \"{name}\" instead of the customer's name. "
     "The preview looks right, only the sent emails are wrong. Customers are replying asking who {name} is..."),
    (("Dates off by one day", "Wrong due dates in reports", "timezone bug?"),
     "All due dates in the reports show one day earlier than what we entered. We're in <<tz>>. Looks like a timezone "
     "conversion problem somewhere, because in the ticket view the dates are correct."),
    (("search broken with accents", "Search finds nothing"),
     "search returns 0 results for anything with an accent, e.g. 'café' or 'Müller' or 'São Paulo'. without accents it works"),
    (("2FA codes always rejected", "Locked out - authenticator codes invalid"),
     "My authenticator codes are rejected every time with 'invalid code'. The time on my phone is synced automatically. "
     "I'm now locked out of my account and can't get any work done."),
    (("File upload stuck at 99%", "Uploads fail over <<size>> MB"),
     "Uploading anything larger than <<size>> MB gets stuck at 99% and then fails with \"Network error\". "
     "<<browser>>, <<os>>. Small files upload fine. We tried two different networks."),
    (("Viewer role can delete projects", "Permission problem - possible security issue"),
     "Pretty sure this is a security issue: a user with the Viewer role in our workspace was able to delete a project.\n\n"
     "Steps to reproduce:\n1. Invite a user with the Viewer role\n2. Log in as that user\n3. Open a project > Settings > Delete\n\n"
     "Expected: 403 / no delete button. Actual: project deleted (we restored it from the trash, thankfully)."),
    (("Dashboard widgets broken", "JS error on dashboard"),
     "None of the dashboard widgets render anymore. The console shows:\n\n"
     "Uncaught TypeError: Cannot read properties of undefined (reading 'map')\n"
     "    at Widget.render (dashboard.4f3a2c.js:1:20331)\n"
     "    at renderWithHooks (vendor.91bd.js:2:88213)\n\n"
     "<<browser>> on <<os>>."),
    (("Still getting notifications for projects I left",),
     "Hi, I left the \"<<company>> onboarding\" project two weeks ago, but I still get an email every time someone "
     "comments there. I checked my notification settings and everything looks right. Could you have a look?"),
    (("Slack integration keeps disconnecting", "Slack disconnects daily"),
     "The Slack integration disconnects every night and I have to re-authorize it every morning. It's been like this "
     "since <<date>>. Other integrations are fine."),
    (("NOTHING WORKS", "Site down??", "everything broken"),
     "Your app has been down for over an hour. <<error_code>> on every single page. We have a client demo in 30 minutes. FIX IT."),
    (("Save button does nothing on <<area>>", "Can't save changes after latest release"),
     "After yesterday's release the Save button on the <<area>> doesn't do anything. No error message, no spinner, "
     "and nothing gets saved. Reloading the page loses all changes."),
    (("API returns duplicate records across pages", "Pagination returns same items twice"),
     "When paging through /v2/tickets with per_page=100 we get the same records on page 3 and page 4. Our cron runs:\n\n"
     "curl -s -H \"Authorization: Bearer $API_TOKEN\" \"https://api.example.com/v2/tickets?page=${PAGE}&per_page=100\" "
     ">> ${HOME}/exports/tickets.jsonl\n\n"
     "and after the run we have about 4% duplicates and some tickets are missing entirely."),
    (("Custom field labels with braces break the form", "500 when field name contains curly braces"),
     "If a custom field label contains curly braces, e.g. `{0.__class__}` or `{x}`, the ticket form crashes with a 500. "
     "We use braces in labels for our internal cost-centre codes, so this affects half our fields. Other special "
     "characters (#, &, ü) work fine."),
    (("429 errors far below rate limit", "Rate limited incorrectly"),
     "We're getting 429 Too Many Requests at roughly 10 requests per minute, far below the documented limit of "
     "<<limit>>/min. Response headers say X-RateLimit-Remaining: <<limit>> and still 429. Something is off."),
    (("Duplicate push notifications", "Push notifications arrive twice"),
     "Every push notification shows up twice on my phone (<<mobile>>: <<device>>). Started after updating to v<<version>>."),
    (("Text unreadable in dark mode", "Dark theme contrast problem"),
     "With the dark theme enabled, the text in the <<area>> is black on dark grey, basically unreadable. "
     "Screenshot attached. <<browser>>."),
    (("<<area>> extremely slow", "Performance degradation", "very slow since last week"),
     "Loading the <<area>> now takes 40+ seconds, it used to be instant. We have around <<n_rows>> records, which "
     "hasn't changed much. Other pages are normal. Can someone look into it? It's really hurting our team."),
    (("Calendar sync creates duplicate events",),
     "The Google Calendar sync creates a duplicate of every event each time it runs. I now have 14 copies of our "
     "weekly stand-up. I disconnected the sync for now."),
    (("Password reset email never arrives", "Not receiving reset link"),
     "I requested a password reset five times today and the email never arrives. Checked spam, checked with IT, "
     "nothing is being blocked. Other emails from you arrive fine."),
    (("Invoice PDF download gives 500", "Can't download invoices"),
     "Clicking \"Download PDF\" on any invoice in the billing section gives a 500 Internal Server Error page. "
     "Our accountant needs the invoices for <<month>> by Friday, so please fix the download."),
    (("Report totals don't add up",),
     "The monthly report says 1,204 tickets closed, but the per-agent breakdown sums to 1,187. Which number is right? "
     "I re-ran the report twice with the same filters and got the same numbers."),
    (("Zapier trigger sends null fields",),
     "The \"New ticket\" Zapier trigger sends null for assignee and priority even when they're set. Sample payload:\n\n"
     "{\"ticket_id\": <<num>>, \"assignee\": null, \"priority\": null, \"status\": \"open\"}\n\n"
     "In the UI the ticket clearly has an assignee and priority \"high\"."),
    (("Emoji turn into ???? in comments",),
     "If I type an emoji like 🎉 in a comment it is saved as \"????\". Same for some Polish letters like ł and ż. "
     "Looks like an encoding problem on your end."),
    (("Bulk delete option gone?", "Where did bulk delete go"),
     "Since the new UI rolled out, the bulk delete option in the <<area>> has disappeared. Was it removed on purpose, "
     "or is it broken? We relied on it daily."),
    (("Logged out every few minutes", "Session keeps expiring"),
     "I get logged out every <<ms>> minutes or so, even while actively typing. Lost a long reply twice today. "
     "<<browser>>, <<os>>."),
    (("NullPointerException in Java SDK", "Java SDK token refresh crash"),
     "The Java SDK (v<<version>>) throws when refreshing the token:\n\n"
     "java.lang.NullPointerException: Cannot invoke \"String.length()\" because \"token\" is null\n"
     "    at com.example.sdk.AuthClient.refresh(AuthClient.java:87)\n"
     "    at com.example.sdk.HttpTransport.execute(HttpTransport.java:142)\n\n"
     "Happens after exactly one hour of uptime."),
    (("CLI does not expand ${HOME} in --config", "CLI config path not found"),
     "Running `acme-cli sync --config ${HOME}/.acme/config.yml` fails with:\n\n"
     "Error: config file not found: ${HOME}/.acme/config.yml\n\n"
     "So the CLI takes the variable literally instead of expanding it. Using the full path works."),
    (("Wrong language in emails",),
     "Our workspace language is English, but since <<date>> all notification emails arrive in German "
     "(\"Neue Antwort auf Ihr Ticket\"). Nobody changed a setting."),
    (("Filters reset when going back",),
     "every time i go back from a ticket to the list, my filters reset. super annoying, have to reapply them 50 times a day"),
]

FEATURE_TEMPLATES: list[Template] = [
    (("Dark mode?", "Feature request: dark mode", "Any plans for a dark theme?"),
     "Would be great to have a dark mode for the web app. Staring at a white screen all day is rough on the eyes 😅"),
    (("Please add Excel export", "Export to .xlsx"),
     "Please add native Excel (.xlsx) export in addition to CSV. Our finance team opens every CSV in Excel anyway and "
     "the leading zeros in our product codes get lost."),
    (("SAML SSO on the <<plan>> plan", "Support for SSO with <<idp>>"),
     "We'd love support for SAML single sign-on with <<idp>>. Managing <<seats>> separate passwords is a pain and our "
     "security team keeps asking about it. Is this on the roadmap?"),
    (("Feature request: bulk update endpoint", "API: endpoint to update many tickets at once"),
     "It would be really helpful to have an API endpoint that updates many tickets in one call. Right now we send "
     "<<n_rows>> individual PATCH requests every night and hit the rate limit."),
    (("Configurable webhook retries", "Webhook retry policy"),
     "Could you add a setting for the webhook retry policy (number of retries, backoff)? When our endpoint is down "
     "for maintenance we lose events after the third retry."),
    (("Custom roles", "More granular permissions"),
     "Feature request: custom user roles. The built-in Admin/Member/Viewer roles aren't enough for us; we need a role "
     "that can edit tickets but not delete them or see the <<area>>."),
    (("Keyboard shortcuts", "shortcuts pls"),
     "any chance of keyboard shortcuts? j/k to move between tickets, e to archive, like gmail. would save me so much time"),
    (("Scheduled reports by email",),
     "It would be nice to be able to schedule reports, e.g. send the weekly summary to our managers every Monday at "
     "8:00. Right now I export and email it by hand every week."),
    (("Localization: German and French UI", "UI translations"),
     "Are there plans to translate the interface? Half of our agents are in Lyon and Köln and would prefer French or "
     "German. We'd be happy to help review translations."),
    (("Terraform provider?",),
     "We manage everything as code. A Terraform provider for workspaces, users and webhooks would make adoption much "
     "easier for platform teams like ours. Any plans?"),
    (("Offline mode for mobile app",),
     "Our field technicians often have no signal. Would love an offline mode in the mobile app that queues updates "
     "and syncs when back online."),
    (("Saved filters", "Save filter presets"),
     "Suggestion: let us save filter combinations as named views. I rebuild the same 4-filter view several times a day."),
    (("Recurring tasks", "Repeat tasks weekly"),
     "Hello! Would it be possible to add recurring tasks (daily / weekly / monthly)? We have a lot of routine "
     "maintenance checks and create them manually every week. Thanks!"),
    (("Stream audit log to S3 / SIEM", "Audit log export"),
     "Enterprise request: we need to stream the audit log to our SIEM (Splunk) or at least to an S3 bucket. "
     "Our compliance team requires 1 year retention and the in-app audit log only keeps 90 days."),
    (("Signed webhooks (HMAC)",),
     "Please add an HMAC signature header to webhook requests so we can verify they really come from you. "
     "Most other providers do this (X-Signature: sha256=...)."),
    (("Variables in canned responses", "Placeholders for macros"),
     "It'd be really useful if canned responses supported variables like {{customer.first_name}} or {ticket_id}, the "
     "way other help desks do. Today we copy-paste names by hand and sometimes get them wrong."),
    (("Timeline / Gantt view",),
     "A Gantt or timeline view for projects would be amazing. We currently export to another tool just to see "
     "dependencies between tasks."),
    (("Microsoft Teams integration", "Teams integration instead of Slack"),
     "You have a great Slack integration, but our company uses Microsoft Teams. Any plans to support Teams? "
     "That's the main thing stopping us from rolling out to the whole org."),
    (("Choose reporting currency",),
     "We sell in EUR and GBP, but the revenue report converts everything to USD. Would love an option to choose the "
     "reporting currency (or show the original currency per deal)."),
    (("Public roadmap?", "Roadmap question - GraphQL"),
     "Do you have a public roadmap? Specifically, I'm wondering whether a GraphQL API is planned. We'd much prefer it "
     "to stitching five REST calls together."),
    (("Raise upload size limit", "Larger attachments"),
     "The <<size>> MB attachment limit is too small for us, we deal with CAD drawings that are often 300+ MB. Could "
     "you raise it, at least for enterprise workspaces?"),
    (("WebAuthn / security keys for 2FA",),
     "Please add support for hardware security keys (YubiKey / WebAuthn) as a second factor. TOTP only is a blocker "
     "for our security review."),
    (("Proposal: approval workflows", "Approval step before sending replies"),
     "Hi team,\n\nWe've been using the product for about a year and we're very happy with it. One thing we keep "
     "running into is that junior agents sometimes send replies that should have been reviewed first.\n\n"
     "What we'd like is an optional approval step: replies from certain roles go into a \"pending approval\" queue, a "
     "lead approves or edits them, and only then are they sent. Ideally with a per-team toggle and an audit trail.\n\n"
     "We know this is a bigger feature, so even a rough idea of whether it's on your radar would help our planning "
     "for next quarter."),
    (("pls add undo",), "pls add an undo for archive. clicked the wrong one again"),
    (("Per-project notification settings",),
     "I'd like to choose notification settings per project instead of globally. Some projects I want every "
     "comment, others only mentions."),
    (("Custom domain for help center",),
     "Is it possible to use our own domain (help.<<domain>>) for the help center? If not, please consider "
     "adding it. Our customers get confused by the different URL."),
    (("Add VAT column to invoice export",),
     "When we export invoices to CSV there's no separate VAT column, only the gross amount. Would it be possible to "
     "add the net amount and VAT as separate columns? It would make reconciliation much easier for our accountant."),
    (("Filter webhook events by project",),
     "Let us filter webhook events by project, so we don't receive (and discard) events for projects our service "
     "doesn't care about. Right now ~80% of the traffic is noise."),
    (("Feature parity with other tools",),
     "We're evaluating you against two competitors. Both have a built-in customer satisfaction survey after a ticket "
     "is closed. Is something like that coming? It's the one thing we'd miss."),
    (("Show row count in export dialog",),
     "Small suggestion: show the number of rows in the export dialog before exporting. Sometimes I export a huge "
     "file by mistake."),
    (("Template syntax for custom emails", "Conditional blocks in email templates"),
     "Our templates use {name} placeholders today. It would be great to also support simple conditionals, for example "
     "{% if plan == \"pro\" %}...{% endif %}, so one template can cover all customer tiers."),
    (("Markdown support in comments",),
     "Can we get Markdown in comments? **bold**, `code` and lists would already help a lot. We paste a lot of log "
     "snippets and they lose their formatting."),
    (("Read-only share links", "Share a dashboard with clients"),
     "We'd like to share a read-only link to a dashboard with our clients without creating user accounts for them. "
     "Is that something you'd consider building?"),
    (("More than 5 custom fields on <<plan>>",),
     "Please increase the number of custom fields allowed. 5 is not enough for our workflow, we need about 12."),
]

BILLING_TEMPLATES: list[Template] = [
    (("Charged twice", "Double charge on my card", "Duplicate payment for <<month>>"),
     "I was charged twice for <<month>>: two charges of <<amount>> on my card on <<date>>. Please refund one of them."),
    (("Refund request", "Refund after cancellation"),
     "I cancelled my subscription on <<date>> but was still charged <<amount>> on <<date2>>. Please refund this charge."),
    (("Add VAT ID to invoice", "Invoice needs our VAT number"),
     "Hello,\n\ncould you please add our VAT ID (<<vat>>) to invoice <<invoice>> and re-issue it? Without it our "
     "accounting department can't book it.\n\nMany thanks"),
    (("Change billing address",),
     "We moved offices. Please update the billing address on our account (<<acct>>) to: <<company>>, "
     "Rue de la Paix 12, 75002 Paris, France. Future invoices should show the new address."),
    (("Upgrade to <<plan_other>> - prorating?", "Question about upgrading mid-cycle"),
     "If we upgrade from <<plan>> to <<plan_other>> in the middle of our billing cycle, is the price prorated or do "
     "we pay the full amount again? We're currently paying <<amount>> per month."),
    (("Downgrade plan", "How to downgrade"),
     "We'd like to downgrade from <<plan>> to a cheaper plan at the end of the current billing period. What happens "
     "to our data and what will we be charged?"),
    (("Card declined", "Payment keeps failing"),
     "My card keeps getting declined when I try to update the payment method, but my bank says no payment attempts "
     "reached them at all. Tried two different cards."),
    (("Price increase??", "Why did our subscription price go up?", "Unannounced price change"),
     "Why did our subscription price go from <<amount>> to <<amount2>> this month? Nobody told us about a price "
     "increase. This is not how you treat customers who have paid on time for two years."),
    (("Cancel subscription", "Please cancel"),
     "Please cancel our subscription effective immediately and confirm that we will not be charged again."),
    (("Switch from annual to monthly billing",),
     "Our annual plan renews on <<date>>. Can we switch to monthly billing at renewal instead? Budget is tight this year."),
    (("Invoice in € instead of $", "Billing currency EUR"),
     "We are based in the Netherlands. Can our invoices be issued in € instead of US dollars? Our bank charges us "
     "conversion fees on every payment."),
    (("Missing receipt", "Receipt for last payment"),
     "I can't find the receipt for our last payment (<<amount>>, <<date>>) in the billing portal. Can you email it to me?"),
    (("Still billed for removed seats", "Seat count wrong on invoice"),
     "We removed <<seats_removed>> seats on <<date>>, but invoice <<invoice>> still bills us for <<seats>> seats. "
     "Please correct the invoice and credit the difference."),
    (("Charged on the free plan?!", "Unexpected charge"),
     "I'm on the free plan and never upgraded, yet I see a charge of <<amount_small>> from your company on my credit card "
     "statement. How is that possible? I want this refunded."),
    (("Tax-exempt status", "Remove sales tax - non-profit"),
     "We are a registered 501(c)(3) non-profit and tax-exempt. How do we send you our exemption certificate so "
     "sales tax is removed from future invoices?"),
    (("Pay by bank transfer with PO", "Purchase order / wire transfer"),
     "Our procurement process requires paying by wire transfer against a purchase order (PO #<<num>>). Can you "
     "invoice us that way instead of charging a credit card?"),
    (("Checkout error and I was charged twice", "Payment went through twice after error"),
     "When I tried to upgrade, the checkout page showed an error (\"Something went wrong, please try again\"), so I "
     "clicked Pay again. Now I see two charges of <<amount>> on my statement. Please refund the duplicate payment."),
    (("App keeps crashing - I want my money back", "Requesting refund, app unusable"),
     "Honestly the app has crashed on me almost every day this month and I've lost work twice. I'm done. Please cancel "
     "my subscription and refund the last payment of <<amount>>."),
    (("Promo code not applied", "Discount missing on invoice"),
     "I used the promo code <<promo>> at checkout, which should give <<pct>>% off, but the invoice shows the full price "
     "(<<amount>>). Can you apply the discount?"),
    (("Invoice amount doesn't match quote",),
     "Our sales quote said <<amount>> per year, but invoice <<invoice>> is for <<amount2>>. Please send a corrected "
     "invoice that matches the signed quote."),
    (("\"Payment failed\" email but card is fine",),
     "We received a \"payment failed\" email this morning, but the card is valid and has funds, and the billing page "
     "shows the last payment as successful. Do we need to do anything?"),
    (("Charged in USD, we're in Germany",),
     "Wir sind in Deutschland - sorry, writing in English: we're charged in USD and our bank adds fees each month. "
     "Our last payment was <<amount>>. Could you bill us in EUR (€)?"),
    (("Send invoices to accounting", "Invoice recipient email"),
     "Please send all future invoices to accounting@<<domain>> as well as to me. Is there a setting for "
     "billing contacts?"),
    (("Non-profit discount?",),
     "Do you offer a discount for charities? We're a small animal shelter on the <<plan>> plan and the price is "
     "a stretch for us."),
    (("how do i update my card",), "how do i update my credit card? the old one expired"),
    (("Account suspended for non-payment but we paid",),
     "Our account was suspended this morning for \"non-payment\", but we paid invoice <<invoice>> (<<amount>>) by "
     "bank transfer on <<date>>. Remittance attached. Please reactivate ASAP, my whole team is blocked!!"),
    (("SLA credit for outage on <<date>>",),
     "Given the outage on <<date>> (about <<hours>> hours), we'd like to claim the service credit specified in our "
     "contract's SLA. Please apply it to our next invoice."),
    (("refund", "refund pls"), "refund pls. invoice <<invoice>>, didn't mean to renew"),
    (("Dispute / chargeback", "Filing a chargeback"),
     "I've asked three times for a refund of <<amount>> and nobody answers. If I don't hear back in 48 hours I'll "
     "file a chargeback with my bank."),
    (("Quote for <<seats>> seats", "Renewal pricing"),
     "Our renewal is coming up on <<date>>. Could you send a quote for <<seats>> seats on the <<plan>> plan, annual "
     "billing? We'd also like to know if there's a volume discount."),
    (("Why was I charged VAT?",),
     "We entered our VAT number at signup, so the reverse-charge mechanism should apply, but the last invoice added "
     "21% VAT (<<amount_small>>). Please correct it."),
    (("Trial converted without warning", "Charged after free trial"),
     "My trial ended and I was charged <<amount>> automatically without any reminder email. I did not want to "
     "continue. Can you reverse the charge?"),
    (("Need invoice copies for 2023",),
     "Our auditors need copies of all invoices for 2023. The billing portal only shows the last 6 months. Could you "
     "send a zip or a statement?"),
]

OTHER_TEMPLATES: list[Template] = [
    (("GDPR data access request", "Subject access request (Art. 15 GDPR)"),
     "Under Article 15 of the GDPR I request a copy of all personal data you hold about me, including the purposes "
     "of processing and who it has been shared with. My account email is the one I'm writing from."),
    (("Delete my account", "Please delete all my data", "Right to erasure"),
     "Please delete my account and all associated personal data. I no longer use the service. Thank you."),
    (("How to add a team member?", "Inviting colleagues"),
     "How do I add a new team member to our workspace? I can't find the option anywhere. Sorry if it's obvious!"),
    (("How do I set up webhooks?", "Webhook setup question"),
     "Hi, how do I set up a webhook for new tickets? The docs mention a \"Developers\" tab but I don't see it. Is it "
     "only visible to admins?"),
    (("Thank you!", "Love the new dashboard", "Great job on the redesign"),
     "Just wanted to say the new <<area>> is fantastic. It saves my team a lot of time. Great work, everyone! 🎉"),
    (("Partnership opportunity", "Reseller partnership"),
     "Hi there,\n\nI'm the founder of a digital agency in Lisbon working with about 40 mid-size retailers. Many of them "
     "ask us for a help desk recommendation. We'd like to discuss a partnership or reseller arrangement.\n\n"
     "Who would be the right person to talk to?\n\nBest regards,\n<<first>>"),
    (("Demo request", "Looking for a demo for <<seats>> agents"),
     "We're evaluating help desk tools for a team of <<seats>> agents and would like to book a demo with your sales "
     "team next week. What times work?"),
    (("Boost your SEO ranking 300%!!!", "Guaranteed first page on Google"),
     "Dear Website Owner, we noticed your website is not ranking on the first page for important keywords. Our SEO "
     "experts can get you 300% more traffic in 30 days!!! Reply YES for a free audit."),
    (("Investment opportunity", "Urgent business proposal"),
     "Dear friend, I have a very profitable crypto opportunity with guaranteed 40% monthly returns. Contact me on "
     "WhatsApp for details. God bless."),
    (("Security questionnaire", "SOC 2 report request"),
     "Our security team needs your latest SOC 2 Type II report and a completed copy of the attached vendor security "
     "questionnaire before we can renew. Is there an NDA we need to sign first?"),
    (("Change account owner", "Transfer ownership of workspace"),
     "Our admin <<first>> left the company. How do we transfer ownership of the workspace to me? I'm currently a member."),
    (("Where is our data stored?", "EU data residency"),
     "Where is our data hosted? We're a German company and our DPO wants to know whether data stays in the EU, and "
     "whether you can sign a DPA."),
    (("Press inquiry", "Interview request"),
     "Hi, I'm a journalist writing a piece on AI in customer support for a tech publication. Would someone from your "
     "team be available for a short interview this week?"),
    (("Is there an OpenAPI spec?", "API documentation question"),
     "Is there an OpenAPI / Swagger spec for your REST API? We'd like to generate a typed client."),
    (("Accessibility / VPAT", "Accessibility conformance report"),
     "Do you have a VPAT or accessibility conformance report (WCAG 2.1 AA)? It's required for our procurement at the university."),
    (("Any update on my ticket?", "Follow-up on #<<num>>", "Re: ticket #<<num>>"),
     "Any update on my previous ticket #<<num>>? I haven't heard back since <<date>>."),
    (("Thanks, that fixed it", "Solved, thanks!"), "Thanks, that fixed it! You can close this one."),
    (("Wrong recipient?",),
     "I think I received this email by mistake, I've never signed up for your service. Who is <<company>>?"),
    (("Unsubscribe", "Stop sending me marketing emails"),
     "Please unsubscribe me from all marketing emails. The unsubscribe link in your newsletter leads to a 404."),
    (("Conference sponsorship", "Sponsoring our meetup"),
     "We're organizing a customer-experience conference in Berlin in May (about 600 attendees) and are looking for "
     "sponsors. Would your marketing team be interested? Deck attached."),
    (("How to escape braces in templates", "Literal {{x}} in a template?"),
     "How do I write a literal {{x}} in a reply template without it being treated as a placeholder? I need to show "
     "customers the text {{x}} as an example. I tried \\{{x\\}} and {{ '{{x}}' }}, neither works."),
    (("Storing the API key safely", "Where to put the API key?"),
     "Quick question: is it OK to keep our API key in ${HOME}/.netrc on the build server, or do you recommend "
     "another approach? We want to follow your guidelines."),
    (("Education program?", "Discount for students?"),
     "I teach a course on service design and would like my students to try the product. Do you have an "
     "education program?"),
    (("Data retention policy",),
     "How long do you keep deleted tickets and attachments? We need to document your retention policy for our ISO "
     "27001 audit."),
    (("Status page?",),
     "Do you have a status page I can subscribe to? I'd like to know about maintenance windows in advance."),
    (("Supplier onboarding form", "Vendor registration"),
     "Before we can start working with you, please complete our supplier onboarding form (attached) and return it "
     "with a W-9. Thank you."),
    (("How to connect Zapier", "Zapier help"),
     "Hello! Can you explain how to connect your app to Zapier? I found the app in the Zapier directory but don't "
     "know where to find the API key it asks for."),
    (("test", "asdf", "hello?"), "test test 123"),
    (("Support in Spanish?", "¿Soporte en español?"),
     "Hola, do you offer support in Spanish? Some of our agents are more comfortable writing in español. Gracias."),
    (("Can we talk to a human?",),
     "I'd rather talk to a person than a bot. Can someone call me at +44 20 7946 0<<num>>? It's about our account setup."),
    (("Recommended workflow for triage?",),
     "We're setting up the tool for a new team and wondering what workflow you'd recommend for triaging incoming "
     "requests. Do you have best-practice guides or example setups?"),
    (("Mail merge syntax question",),
     "In the docs, the example says to write Hello {name}, but our old tool used ${name}. Which syntax should we "
     "use for new templates? Just want to make sure before we migrate 200 templates."),
    (("Customer story", "Case study?"),
     "We've had great results with your product (response times down 40%). Would you be interested in a case study? "
     "Happy to share numbers."),
    (("Job application", "Open positions?"),
     "Hi, I saw you're hiring support engineers. Is the position still open and can I apply remotely from Portugal?"),
]

TEMPLATES: dict[str, list[Template]] = {
    "bug": BUG_TEMPLATES,
    "feature": FEATURE_TEMPLATES,
    "billing": BILLING_TEMPLATES,
    "other": OTHER_TEMPLATES,
}

EXTRAS: dict[str, list[str]] = {
    "bug": [
        "Steps to reproduce:\n1. Log in\n2. Open the <<area>>\n3. Wait a few seconds\n\nExpected: it works. Actual: it doesn't.",
        "Workaround for now is to use a private window, but that's not sustainable.",
        "Screenshot attached. Happy to jump on a call if that helps.",
        "Browser: <<browser>>\nOS: <<os>>\nAccount: <<acct>>",
        "It worked fine until <<date>>.",
        "Colleagues on <<os>> see the same thing.",
        "We're on the <<plan>> plan, in case that matters.",
        "Request ID from the error page: req_<<num>>",
        "Some more context, in case it helps: we rolled the product out to the whole support team (<<seats>> people) "
        "a couple of months ago and until recently everything was smooth. The problem first showed up for "
        "<<colleague>> on <<date>>, and since then it has happened to more and more of us. We haven't changed "
        "anything in our setup as far as I know: same browsers, same SSO configuration, same integrations.\n\n"
        "We've tried logging out and back in, different browsers (<<browser>> and <<browser2>>), incognito mode and "
        "a different network (home vs. office). The result is the same everywhere, so I'm fairly sure it's not "
        "on our side.\n\nThis is becoming a real problem for us because the team depends on it every day.",
    ],
    "feature": [
        "We're on the <<plan>> plan with <<seats>> seats, for context.",
        "Happy to beta test if it helps!",
        "Thanks for considering it.",
        "This would also help with <<topic>>, by the way.",
        "Our team lead <<colleague>> asked me to pass this on.",
        "Other than that we really like the product.",
    ],
    "billing": [
        "Account ID: <<acct>>",
        "Our plan: <<plan>>.",
        "Please reply quickly, our finance team closes the books on Friday.",
        "Invoice reference: <<invoice>>",
        "Thanks for sorting this out.",
        "To give you the full picture: we've been customers since 2021 and have always paid on time. Our finance "
        "team reconciles every invoice against the contract, and this month the numbers simply don't match what "
        "we agreed. I already wrote to <<colleague>> in your sales team on <<date>> but got no reply.\n\n"
        "We don't want to escalate this, but we need a corrected document before our month-end close. If it is "
        "easier to talk it through, I'm available most afternoons (CET).",
    ],
    "other": [
        "Thanks in advance.",
        "Account: <<acct>>",
        "No rush on this.",
        "We're on the <<plan>> plan, if that matters.",
    ],
}

GREETINGS = {
    "email": ["Hi,", "Hello,", "Hi team,", "Hello support team,", "Dear Support,", "Good morning,", "Hi there,", "Bonjour,", ""],
    "web": ["", "", "Hi,", "Hello,"],
    "chat": ["", "hi,", "hey,", "hello -", "Hi!"],
}
SIGNOFFS_EMAIL = [
    "Thanks,\n<<first>>", "Best regards,\n<<name>>", "Cheers,\n<<first>>", "Kind regards,\n<<name>>\n<<company>>",
    "— <<first>>", "Thank you!", "Regards,\n<<name>>\nSent from my iPhone", "Merci,\n<<first>>", "",
]
POLITE_OPEN = ["Hope you're well!", "Sorry to bother you again.", "I hope this is the right place to ask."]
POLITE_CLOSE = ["Thanks so much in advance 🙏", "Appreciate your help!", "Thank you for your time.", "Many thanks, you've always been very helpful."]
ANGRY_LINES = [
    "This is the THIRD time I'm writing about this.", "Honestly considering switching to a competitor.",
    "Very disappointed.", "This is unacceptable for a paid product.", "Please actually read my message this time. 😡",
    "We pay good money for this!!",
]

_SLOT_RE = re.compile(r"<<(\w+)>>")
_WORD_RE = re.compile(r"\b[a-z]{5,}\b")


def _fill(text: str, rng: random.Random, ctx: dict) -> str:
    def repl(m: re.Match) -> str:
        key = m.group(1)
        if key not in ctx:
            if key == "name":
                ctx[key] = ctx["_name"]
            else:
                ctx[key] = SLOTS[key](rng, ctx)
        return ctx[key]

    return _SLOT_RE.sub(repl, text)


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 2)
    kind = rng.randrange(3)
    if kind == 0:  # swap neighbours
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:  # drop a letter
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]  # double a letter


def _add_typos(text: str, rng: random.Random) -> str:
    words = list(_WORD_RE.finditer(text))
    if not words:
        return text
    chosen = sorted(rng.sample(words, min(len(words), rng.randint(1, 3))), key=lambda m: m.start())
    out, pos = [], 0
    for m in chosen:
        out.append(text[pos:m.start()])
        out.append(_typo(m.group(0), rng))
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def _timestamps(rng: random.Random, count: int) -> list[_dt.datetime]:
    span_days = (END - START).days
    hours_w = [1, 1, 1, 1, 1, 2, 3, 5, 8, 10, 10, 9, 8, 9, 10, 9, 8, 6, 4, 3, 2, 2, 1, 1]
    out = []
    for _ in range(count):
        day = START + _dt.timedelta(days=rng.randrange(span_days))
        if day.weekday() >= 5 and rng.random() < 0.6:  # quieter weekends
            day -= _dt.timedelta(days=rng.randint(1, 2))
        hour = rng.choices(range(24), hours_w)[0]
        out.append(day + _dt.timedelta(hours=hour, minutes=rng.randrange(60), seconds=rng.randrange(60)))
    out.sort()
    return out


def _tier(rng: random.Random, label: str) -> str:
    if label == "billing":
        weights = (15, 55, 30)
    elif label == "other":
        weights = (50, 35, 15)
    else:
        weights = (40, 42, 18)
    return rng.choices(("free", "pro", "enterprise"), weights)[0]


def _compose_body(label: str, template: Template, channel: str, rng: random.Random, ctx: dict) -> tuple[str, str]:
    subjects, body = template
    subject = rng.choice(subjects)
    parts: list[str] = []

    tone = rng.choices(("neutral", "polite", "angry", "terse"), (55, 20, 12, 13))[0]
    if channel == "phone":
        tone = "neutral"
    angry_first = rng.random() < 0.5
    if tone == "polite" and rng.random() < 0.5:
        parts.append(rng.choice(POLITE_OPEN))
    if tone == "angry" and angry_first:
        parts.append(rng.choice(ANGRY_LINES))
    parts.append(body)
    if tone != "terse":
        n_extra = rng.choices((0, 1, 2), (55, 35, 10))[0]
        for extra in rng.sample(EXTRAS[label], n_extra):
            parts.append(extra)
    if tone == "angry" and not angry_first:
        parts.append(rng.choice(ANGRY_LINES))
    if tone == "polite":
        parts.append(rng.choice(POLITE_CLOSE))

    text = "\n\n".join(parts)
    if channel == "phone":
        text = (f"[Phone call, notes by agent {rng.choice(AGENTS)}] Caller from <<company>> "
                f"reports:\n\n{text}\n\nAsked for a written follow-up by email.")
    elif tone != "terse":
        greeting = rng.choice(GREETINGS[channel])
        if greeting:
            text = f"{greeting}\n\n{text}" if channel == "email" else f"{greeting} {text}"
        if channel == "email":
            signoff = rng.choice(SIGNOFFS_EMAIL)
            if signoff:
                text = f"{text}\n\n{signoff}"
    if channel == "chat" and rng.random() < 0.4:
        text = text[:1].lower() + text[1:]
    subject = _fill(subject, rng, ctx)
    text = _fill(text, rng, ctx)
    if rng.random() < 0.07:
        text = _add_typos(text, rng)
        if rng.random() < 0.3:
            subject = _add_typos(subject, rng)
    if tone == "angry" and rng.random() < 0.3:
        subject = subject.upper() + "!!!"
    return subject, text


def generate(count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> list[dict]:
    """Return ``count`` ticket dicts, deterministically from ``seed``."""
    rng = random.Random(seed)
    labels: list[str] = []
    for label, share in LABEL_SHARES:
        labels += [label] * round(count * share)
    while len(labels) < count:
        labels.append("bug")
    del labels[count:]
    rng.shuffle(labels)
    stamps = _timestamps(rng, count)
    # Cycle through each label's templates in a shuffled order so every
    # template is used about equally often.
    decks: dict[str, list[Template]] = {k: [] for k in TEMPLATES}
    channel_names = [c for c, _ in CHANNELS]
    channel_weights = [w for _, w in CHANNELS]

    tickets = []
    for i, (label, created) in enumerate(zip(labels, stamps), start=1):
        if not decks[label]:
            decks[label] = list(TEMPLATES[label])
            rng.shuffle(decks[label])
        template = decks[label].pop()
        tier = _tier(rng, label)
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        channel = rng.choices(channel_names, channel_weights)[0]
        ctx: dict = {"_tier": tier, "_name": name, "_created": created}
        subject, body = _compose_body(label, template, channel, rng, ctx)
        tickets.append({
            "id": f"T{i:06d}",
            "subject": subject,
            "body": body,
            "customer": {"name": name, "tier": tier},
            "channel": channel,
            "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "language": "en",
            "label": label,
        })
    return tickets


def write(tickets: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="\n") as fh:
        for t in tickets:
            fh.write(json.dumps(t, ensure_ascii=False) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the sample support tickets (JSONL).")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output path (default: {DEFAULT_OUT})")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="number of tickets (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be positive")
    tickets = generate(args.count, args.seed)
    write(tickets, args.out)
    print(f"wrote {len(tickets)} tickets to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A valid document: its served form, its policy hash, its tag path, the default."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from collector.containers.schema import DEFAULT_CONSENT, DEFAULT_SETTINGS, DEFAULT_TAG_PATH
from consent.policy import policy_hash
from consent.purposes import BUILT_IN, NECESSARY

# -- the document -----------------------------------------------------------------------------


def normalize(document: Mapping[str, Any]) -> dict[str, Any]:
    """A valid document with every default filled in: what the tag is served."""
    doc = copy.deepcopy(dict(document))
    settings = {**copy.deepcopy(DEFAULT_SETTINGS), **doc.get("settings", {})}
    settings["auto"] = {**DEFAULT_SETTINGS["auto"], **doc.get("settings", {}).get("auto", {})}
    consent = {**DEFAULT_CONSENT, **doc["consent"]}
    consent["purposes"] = [
        {"id": p["id"], "required": bool(p.get("required", False)),
         "default": bool(p.get("default", False))}
        for p in consent["purposes"]
    ]
    triggers = [{**t, "conditions": t.get("conditions", [])} for t in doc.get("triggers", [])]
    tags = [{"name": t["id"], **t, "blocking_triggers": t.get("blocking_triggers", [])}
            for t in doc.get("tags", [])]
    return {"settings": settings, "consent": consent, "variables": doc.get("variables", []),
            "triggers": triggers, "tags": tags}


def container_policy_hash(document: Mapping[str, Any]) -> str:
    """The consent policy hash of a valid document (DESIGN.md section 1)."""
    consent = document["consent"]
    return policy_hash(
        consent["purposes"],
        consent.get("policy_version", DEFAULT_CONSENT["policy_version"]),
        [(t["id"], t["purpose"]) for t in document.get("tags", [])],
        (consent.get("lifetime_days", DEFAULT_CONSENT["lifetime_days"]),
         consent.get("rejection_lifetime_days", DEFAULT_CONSENT["rejection_lifetime_days"])),
    )


def resolved_tag_path(document: Mapping[str, Any], site_id: str) -> str:
    """The container's own tag path for ``site_id``, or "" for the default ``/t/{site}.js``."""
    template = document.get("settings", {}).get("tag_path", DEFAULT_TAG_PATH)
    path = template.replace("{site}", site_id)
    return "" if path == DEFAULT_TAG_PATH.replace("{site}", site_id) else path


def default_container() -> dict[str, Any]:
    """A new site's container: the four built-in purposes, English and German banner texts,
    automatic tracking on, no third-party tags."""
    return {
        "settings": copy.deepcopy(DEFAULT_SETTINGS),
        "consent": {
            "purposes": [{"id": NECESSARY, "required": True},
                         *({"id": p, "default": False} for p in BUILT_IN if p != NECESSARY)],
            **DEFAULT_CONSENT,
            "texts": copy.deepcopy(DEFAULT_TEXTS),
        },
        "variables": [{"id": "page_path", "type": "url", "part": "path"}],
        "triggers": [{"id": "all_pages", "type": "page_view"}],
        "tags": [],
    }


# Both buttons say the same kind of thing in the same few words: rejecting must be as easy
# as accepting (the banner shows them side by side, equally prominent).
DEFAULT_TEXTS: dict[str, Any] = {
    "en": {
        "title": "Your privacy choices",
        "body": (
            "We use cookies and similar technologies. Some are necessary for this website to "
            "work. With your consent we also use them to understand how the website is used "
            "(analytics), to remember your preferences and personalise content "
            "(personalisation), and to show you relevant advertising and measure its success "
            "(marketing); for marketing, data may be shared with our advertising partners. "
            "You can accept all, reject all, or choose for each purpose in the settings. "
            "Rejecting has no disadvantage for you. You can change your choice or withdraw "
            "your consent at any time, with effect for the future."
        ),
        "accept_all": "Accept all",
        "reject_all": "Reject all",
        "settings": "Settings",
        "save": "Save choices",
        "purposes": {
            "necessary": {
                "name": "Necessary",
                "description": "Needed for the website to work, for example to remember your "
                               "privacy choices. These cannot be switched off.",
            },
            "analytics": {
                "name": "Analytics",
                "description": "Helps us understand how visitors use the website, for example "
                               "which pages are visited, so that we can improve it.",
            },
            "personalization": {
                "name": "Personalisation",
                "description": "Remembers your preferences and adapts content and "
                               "recommendations to you.",
            },
            "marketing": {
                "name": "Marketing",
                "description": "Lets us and our advertising partners show you relevant "
                               "advertising and measure how well it works.",
            },
        },
    },
    "de": {
        "title": "Ihre Datenschutz-Einstellungen",
        "body": (
            "Wir verwenden Cookies und ähnliche Technologien. Einige sind für den Betrieb "
            "dieser Website notwendig. Mit Ihrer Einwilligung setzen wir sie außerdem ein, um "
            "zu verstehen, wie die Website genutzt wird (Statistik), um Ihre Einstellungen zu "
            "speichern und Inhalte für Sie anzupassen (Personalisierung) sowie um Ihnen "
            "relevante Werbung zu zeigen und deren Erfolg zu messen (Marketing); für Marketing "
            "können Daten an unsere Werbepartner übermittelt werden. Sie können allem "
            "zustimmen, alles ablehnen oder in den Einstellungen für jeden Zweck einzeln "
            "wählen. Eine Ablehnung hat für Sie keine Nachteile. Sie können Ihre Auswahl "
            "jederzeit mit Wirkung für die Zukunft ändern oder Ihre Einwilligung widerrufen."
        ),
        "accept_all": "Alle akzeptieren",
        "reject_all": "Alle ablehnen",
        "settings": "Einstellungen",
        "save": "Auswahl speichern",
        "purposes": {
            "necessary": {
                "name": "Notwendig",
                "description": "Für den Betrieb der Website erforderlich, zum Beispiel um Ihre "
                               "Datenschutz-Einstellungen zu speichern. Diese können nicht "
                               "abgewählt werden.",
            },
            "analytics": {
                "name": "Statistik",
                "description": "Hilft uns zu verstehen, wie Besucher die Website nutzen, zum "
                               "Beispiel welche Seiten aufgerufen werden, damit wir sie "
                               "verbessern können.",
            },
            "personalization": {
                "name": "Personalisierung",
                "description": "Speichert Ihre Vorlieben und passt Inhalte und Empfehlungen "
                               "an Sie an.",
            },
            "marketing": {
                "name": "Marketing",
                "description": "Ermöglicht uns und unseren Werbepartnern, Ihnen relevante "
                               "Werbung zu zeigen und deren Erfolg zu messen.",
            },
        },
    },
}

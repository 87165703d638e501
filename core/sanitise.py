"""Error texts that reach a tenant (job `error`, error events): a short, escaped excerpt with no secrets and no
server file paths.

A stage's failure text may quote a remote server's response body (a judge endpoint), an exception's message with
absolute paths of the data dir, model caches or the installed code, or a connection URL with a password. Before
any of it is stored on a job, `sanitise_error_text`:

1. replaces the values of secrets this process knows (the judge profiles' key variables, well-known token
   variables, any variable whose name says KEY/TOKEN/SECRET/PASSWORD, the metrics token, database and broker
   URLs) with `***`, then key-like tokens (`sk-...`, `rk_...`, `Bearer ...`, URL user:password@) too;
2. replaces server paths: the configured roots become placeholders (`<data>/jobs/...`, `<datasets>/...`,
   `<models>/...`), any other absolute path keeps only its last component (`<path>/file.py`);
3. escapes control characters, NUL and lone surrogates (`\\n`, `\\x00`, `\\ud800`);
4. cuts the result to `max_len` characters, saying how much was cut.

Pure: no I/O beyond reading `os.environ` when no explicit `secrets` are given.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from core.settings import Settings

MAX_ERROR_CHARS = 1000
JUDGE_ERROR_CHARS = 300  # a judge's failure text (probe call, a triage item's error): a shorter excerpt
MIN_SECRET_CHARS = 6  # shorter values are not treated as secrets (they would blank out ordinary words)
WELL_KNOWN_SECRET_ENV = ("OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AZURE_OPENAI_API_KEY",
                         "ANTHROPIC_API_KEY", "AWS_SECRET_ACCESS_KEY", "REALIGN_DATABASE_URL", "REALIGN_BROKER_URL",
                         "REALIGN_METRICS_TOKEN", "DATABASE_URL", "PGPASSWORD")
_SECRET_ENV_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSW(OR)?D|CREDENTIAL|AUTH)", re.IGNORECASE)
# a key-like token has a digit somewhere (so field names such as `api_key_secret` stay readable)
_KEY_LIKE = re.compile(r"\b(sk|rk|pk|hf|ghp|gho|xox[abp]|key|api[_-]?key)[-_](?=[A-Za-z0-9_\-*.]*\d)"
                       r"[A-Za-z0-9_\-*.]{6,}", re.IGNORECASE)
_BEARER = re.compile(r"\b(bearer|basic|token)\s+[A-Za-z0-9_\-.=+/*]{6,}", re.IGNORECASE)
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@'\"]+@")
_LONG_TOKEN = re.compile(r"(?<![A-Za-z0-9_\-+=])(?=[A-Za-z0-9_\-+=]*[A-Z])(?=[A-Za-z0-9_\-+=]*[a-z])"
                         r"(?=[A-Za-z0-9_\-+=]*[0-9])[A-Za-z0-9_\-+=]{40,}")
# an absolute POSIX path: starts after a space, quote, bracket, '=' or ',' (never inside a URL or a word)
_ABS_PATH = re.compile(r"(?<![\w/:.~\-%>])/(?:[^\s'\"(),;<>\[\]{}|]+/)*[^\s'\"(),;<>\[\]{}|/:]*")


def secret_values(settings: Settings | None = None, environ: Mapping[str, str] | None = None) -> list[str]:
    """The secret values this process could leak, longest first (so a longer secret is replaced whole)."""
    env = os.environ if environ is None else environ
    names = set(WELL_KNOWN_SECRET_ENV) | {name for name in env if _SECRET_ENV_NAME.search(name)}
    values = {env[name] for name in names if env.get(name)}
    if settings is not None:
        values |= {env[name] for name in settings.secret_env_names() if env.get(name)}
        if settings.metrics_token is not None:
            values.add(settings.metrics_token.get_secret_value())
        values |= {url for url in (settings.database_url, settings.broker_url) if url}
    for url in list(values):  # a URL's password alone, too (a driver may print it without the rest)
        match = re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/\s@:]*:([^/\s@]+)@", url)
        if match:
            values.add(match.group(1))
    return sorted((v for v in values if len(v) >= MIN_SECRET_CHARS), key=len, reverse=True)


def path_roots(settings: Settings | None = None) -> list[tuple[str, str]]:
    """(absolute prefix, placeholder) pairs, most specific first."""
    roots: list[tuple[Path | None, str]] = []
    if settings is not None:
        roots += [(settings.datasets_root, "<datasets>"), (settings.models_root, "<models>"),
                  (settings.serving_adapter_root, "<data>"), (settings.data_dir, "<data>")]
    roots += [(Path(__file__).resolve().parents[1], "<code>"), (Path(sys.prefix), "<python>"),
              (Path(tempfile.gettempdir()), "<tmp>"), (Path.home(), "<home>")]
    pairs: dict[str, str] = {}
    for root, label in roots:
        if root is None:
            continue
        for variant in {str(root), str(Path(root).resolve())}:
            if len(variant) > 1:
                pairs.setdefault(variant.rstrip("/"), label)
    return sorted(pairs.items(), key=lambda item: len(item[0]), reverse=True)


def _replace_roots(text: str, roots: Iterable[tuple[str, str]]) -> str:
    for prefix, label in roots:
        text = re.sub(re.escape(prefix) + r"(?=/|\b|$)", label, text)
    return text


def _shorten_path(match: re.Match[str]) -> str:
    path = match.group(0)
    if path.count("/") < 2:  # "/", "/v1", "/etc": not worth hiding, and often not a path at all
        return path
    return "<path>/" + path.rstrip("/").rsplit("/", 1)[-1]


def _escape(text: str) -> str:
    out = []
    for ch in text:
        if ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif ch == " " or (ch.isprintable() and unicodedata.category(ch) not in ("Cs", "Co", "Cn")):
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def sanitise_error_text(text: str, *, settings: Settings | None = None, max_len: int = MAX_ERROR_CHARS,
                        secrets: Iterable[str] | None = None, environ: Mapping[str, str] | None = None) -> str:
    """`text` made fit for a job record (see the module docstring). `secrets` replaces the values looked up
    from the environment and `settings` (tests pass their own)."""
    text = str(text)
    values = list(secrets) if secrets is not None else secret_values(settings, environ)
    for value in sorted((v for v in values if v), key=len, reverse=True):
        text = text.replace(value, "***")
    text = _URL_USERINFO.sub(r"\1***@", text)
    text = _BEARER.sub(lambda m: m.group(1) + " ***", text)
    text = _KEY_LIKE.sub(lambda m: m.group(1) + "-***", text)
    text = _LONG_TOKEN.sub("***", text)
    text = _replace_roots(text, path_roots(settings))
    text = _ABS_PATH.sub(_shorten_path, text)
    text = _escape(text)
    if len(text) > max_len:
        cut = len(text) - max_len
        text = text[:max_len].rstrip("\\") + f"... [{cut} more characters cut]"
    return text


def sanitise_error(error: Mapping[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """A job error dict with every string in it (nested too) sanitised; keys and non-strings kept."""
    values = secret_values(settings)
    return map_strings(dict(error), lambda text: sanitise_error_text(text, settings=settings, secrets=values))


def scrub_server_paths(value: Any, settings: Settings | None = None) -> Any:
    """A JSON value (a report, a summary) as tenants may see it: every string with a server path in it gets the
    placeholders of `sanitise_error_text` (`<data>/...`, `<models>/...`, `<path>/name`), and the serving
    backend's URL becomes `<serving>`; nothing else changes (no cutting, no escaping, no secret scan)."""
    roots = path_roots(settings)
    urls = sorted({u.rstrip("/") for u in (settings.serving_url, settings.serving_api_url) if u}, key=len,
                  reverse=True) if settings is not None else []

    def clean(text: str) -> str:
        for url in urls:
            text = text.replace(url, "<serving>")
        return _ABS_PATH.sub(_shorten_path, _replace_roots(text, roots)) if "/" in text else text

    return map_strings(value, clean)


def map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """`value` (JSON-like) with `fn` applied to every string inside it; keys and other scalars kept."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, Mapping):
        return {k: map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [map_strings(v, fn) for v in value]
    return value

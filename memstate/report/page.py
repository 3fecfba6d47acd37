"""The HTML page skeleton shared by every memstate report: one self-contained file, CSS inline, names escaped."""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 72em;
  padding: 0 1.2em; color: #222; }
h1 { font-size: 1.35em; margin-bottom: .3em; }
h2 { font-size: 1.12em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: .15em; }
h3 { font-size: 1em; margin: 1.2em 0 .4em; }
.clean, .agree { color: #17692a; } .fail, .diverge { color: #b00020; }
table { border-collapse: collapse; }
td, th { padding: .15em .7em; text-align: left; border-bottom: 1px solid #eee; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; } tr.bad td { background: #fde8ea; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: 12.5px; }
.code, code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.code { font-weight: 600; }
.muted { color: #777; } .nw { white-space: nowrap; }
"""

DIFF_CSS = """
.banner { padding: .6em .9em; border-radius: 6px; font-weight: 600; font-size: 1.05em; margin: .6em 0; }
.banner.agree { background: #e6f4ea; border: 1px solid #9bd3a9; }
.banner.diverge { background: #fdecee; border: 1px solid #f0a8b2; }
.cards { display: flex; flex-wrap: wrap; gap: .6em; margin: .8em 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .35em .8em; min-width: 7em; }
.card .k { font-size: .78em; color: #666; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 1.1em; font-weight: 600; overflow-wrap: anywhere; }
.traces td, .traces th { border: none; padding: .05em .6em .05em 0; }
.side { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.side > * { flex: 0 1 auto; } .side > .factbox { flex: 1 1 24em; max-width: 36em; }
table.facts th { font-weight: 500; color: #555; white-space: nowrap; }
table.facts td { overflow-wrap: break-word; }
table.worst td.n, table.worst th { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 12.5px; }
table.worst .same { color: #999; } table.worst .diff { color: #b00020; font-weight: 600; }
figure { margin: .4em 0 1em; } figure.fit { width: min-content; } figcaption { font-size: .85em; color: #555; max-width: 60em; }
.diag { border-left: 4px solid #bbb; padding: .3em .9em; margin: .7em 0; background: #fafafa; }
.diag.top { border-left-color: #b00020; background: #fff6f7; }
.diag .head { font-weight: 600; } .conf { display: inline-block; width: 8em; height: .6em; background: #eee;
  border-radius: 3px; vertical-align: middle; margin: 0 .4em; overflow: hidden; }
.conf > span { display: block; height: 100%; background: #b00020; }
details { margin: .5em 0; } summary { cursor: pointer; color: #444; }
.legend { list-style: none; padding: 0; margin: .3em 0; display: flex; flex-wrap: wrap; gap: .2em 1.1em;
  font-size: .85em; }
.legend .sw { display: inline-block; width: 1.8em; height: 0; border-top: 3px solid; vertical-align: middle;
  margin-right: .35em; }
.legend .hl { font-weight: 700; }
.multiples { display: flex; flex-wrap: wrap; gap: .3em .8em; }
.multiples figure { margin: 0; } .multiples figcaption { font-size: .8em; }
table.errors { font-size: 12.5px; } table.errors td { text-align: right; font-variant-numeric: tabular-nums;
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; white-space: nowrap;
  border: 1px solid #fff; }
table.errors th { white-space: nowrap; } table.errors thead th { text-align: right; }
table.errors thead th:first-child { text-align: left; }
table.errors td.f1 { background: #fde0e3; } table.errors td.f2 { background: #f9b3bc; }
table.errors td.f3 { background: #f07c8b; } table.errors td.ex { background: #fff1c2; }
table.errors td.na { color: #aaa; text-align: center; } table.errors td.eq { color: #9a9a9a; }
table.errors td.first { outline: 2px solid #222; outline-offset: -2px; }
table.errors .gap { color: #aaa; text-align: center; border: none; }
.sev { font-size: .8em; font-weight: 700; padding: 0 .4em; border-radius: 3px; text-transform: uppercase; }
.sev.error { background: #b00020; color: #fff; } .sev.warning { background: #f2c14e; }
.sev.info { background: #dde6f0; }
svg text { font: 11px system-ui, -apple-system, "Segoe UI", sans-serif; fill: #333; }
svg .grid { stroke: #e6e6e6; } svg .axis { stroke: #999; } svg .tol { stroke: #2a7ab0; stroke-dasharray: 5 3; }
svg .fd { stroke: #b00020; stroke-dasharray: 4 3; } svg text.tol { fill: #2a7ab0; stroke: none; }
svg text.fd { fill: #b00020; stroke: none; } svg .band { fill: #f6f6f6; }
"""


def esc(x: Any) -> str:
    """`x` as text safe inside HTML and SVG, attribute values included."""
    return html.escape(str(x), quote=True)


def page(title: str, body: str | Iterable[str], css: str = "") -> str:
    """A whole self-contained page: doctype, charset, the shared CSS (plus `css`), and `body` (HTML)."""
    body = body if isinstance(body, str) else "\n".join(body)
    return ("<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title>\n<style>{CSS}{css}</style></head><body>\n{body}\n</body></html>\n")

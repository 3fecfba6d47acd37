"""A small element tree of an HTML page built with the standard library's html.parser, so that report tests can
assert a page's structure (sections, table rows, figures) instead of searching its text for substrings."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Iterator

VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "col", "wbr"})


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list["Element | str"] = field(default_factory=list)

    def iter(self, tag: str | None = None) -> Iterator["Element"]:
        """This element and every element below it, in document order (only `tag` ones when given)."""
        if tag is None or self.tag == tag:
            yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter(tag)

    def find_all(self, tag: str, **attrs: str) -> list["Element"]:
        return [e for e in self.iter(tag) if all(e.attrs.get(k.rstrip("_")) == v for k, v in attrs.items())]

    def find(self, tag: str, **attrs: str) -> "Element":
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag} {attrs}>"
        return found[0]

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        el = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(el)
        if tag not in VOID:
            self.stack.append(el)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if self.stack[-1].tag != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1].tag}>")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(page: str) -> Element:
    """The page's element tree; fails on a mis-nested or unclosed element."""
    b = _Builder()
    b.feed(page)
    b.close()
    assert not b.errors, b.errors[:5]
    assert [e.tag for e in b.stack] == ["#document"], [e.tag for e in b.stack]
    return b.root


def sections(body: Element) -> list[str]:
    """The text of every h2, in order."""
    return [h.text.strip() for h in body.iter("h2")]


def section_after(root: Element, heading: str, tag: str) -> Element:
    """The first `tag` element after the h2 whose text starts with `heading` and before the next h2."""
    seen = False
    for el in root.iter():
        if el.tag == "h2":
            if seen:
                break
            seen = el.text.strip().startswith(heading)
        elif seen and el.tag == tag:
            return el
    raise AssertionError(f"no <{tag}> in section {heading!r}")


def rows(table: Element) -> list[list[str]]:
    """Each row of a table as the stripped text of its cells (th and td)."""
    return [[c.text.strip() for c in tr.children if isinstance(c, Element) and c.tag in ("th", "td")]
            for tr in table.iter("tr")]

"""A small element tree over the standard library's HTML parser.

Result pages are read with a handful of questions (elements with this
attribute, the text under that one), which this tree answers without a third
party HTML library. It is forgiving in the way browsers are: void elements
never take children, and a closing tag closes every element opened after its
match; a closing tag with no open match is ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser

VOID_TAGS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta"}
    | {"param", "source", "track", "wbr"}
)


class Element:
    """One element: its tag, its attributes (valueless ones map to ``""``) and
    its children, elements and text in document order."""

    __slots__ = ("attrs", "children", "parent", "tag")

    def __init__(self, tag: str, attrs: dict[str, str], parent: Element | None):
        self.tag = tag
        self.attrs = attrs
        self.parent = parent
        self.children: list[Element | str] = []

    def get(self, name: str) -> str | None:
        return self.attrs.get(name)

    def has_class(self, name: str) -> bool:
        return name in self.attrs.get("class", "").split()

    def iter(self) -> Iterator[Element]:
        """This element and every element under it, in document order."""
        stack: list[Element] = [self]
        while stack:
            element = stack.pop()
            yield element
            below = [child for child in element.children if isinstance(child, Element)]
            stack.extend(reversed(below))

    def find_all(
        self, tag: str | None = None, *, cls: str | None = None, attr: str | None = None
    ) -> list[Element]:
        """Elements under this one (itself included) matching every criterion
        given: a tag name, a class, an attribute that is present."""
        return [
            element
            for element in self.iter()
            if (tag is None or element.tag == tag)
            and (cls is None or element.has_class(cls))
            and (attr is None or attr in element.attrs)
        ]

    def find(
        self, tag: str | None = None, *, cls: str | None = None, attr: str | None = None
    ) -> Element | None:
        """The first element that :meth:`find_all` would give, or None."""
        found = self.find_all(tag, cls=cls, attr=attr)
        return found[0] if found else None

    def text(self) -> str:
        """All text under this element, runs of white space made one space."""
        pieces: list[str] = []
        stack: list[Element | str] = [self]
        while stack:
            node = stack.pop()
            if isinstance(node, str):
                pieces.append(node)
            else:
                stack.extend(reversed(node.children))
        return " ".join("".join(pieces).split())


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {}, None)
        self.open: list[Element] = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = self._append(tag, attrs)
        if tag not in VOID_TAGS:
            self.open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._append(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.open) - 1, 0, -1):
            if self.open[depth].tag == tag:
                del self.open[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.open[-1].children.append(data)

    def _append(self, tag: str, attrs: list[tuple[str, str | None]]) -> Element:
        values = {name: value or "" for name, value in attrs}
        element = Element(tag, values, self.open[-1])
        self.open[-1].children.append(element)
        return element


def parse_html(html: str) -> Element:
    """The element tree of a page; its root is a ``#document`` element."""
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root

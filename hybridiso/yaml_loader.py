"""The manifest's YAML reader: parsed once, with bounds (docs/faults.md row 39).

PyYAML builds a node graph first and Python values from it second.  This
reader checks the graph between the two, so a hostile file is refused before
it costs anything:

- aliases: at most ``MAX_ALIASES`` alias nodes, and at most ``MAX_VALUES``
  values once every alias is expanded (nine levels of ten aliases each -- a
  "billion laughs" -- are 90 aliases but 10**9 values: it ran 36 s, then
  ``MemoryError``); an alias inside its own anchor is refused too;
- nesting: at most ``MAX_DEPTH`` levels, counted while composing, so 5,000
  ``[`` never recurse in Python (it was a ``RecursionError``);
- duplicate keys in one mapping: refused with both lines (YAML says keys are
  unique; PyYAML silently kept the last).  A key that a merge (``<<: *x``)
  brings in may be overridden, as YAML intends.

The same graph gives every value its line, for the manifest's errors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

MAX_ALIASES = 100
MAX_VALUES = 100_000
MAX_DEPTH = 64

Loc = tuple[str | int, ...]
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TOO_DEEP = f"nested too deeply (more than {MAX_DEPTH} levels of lists or mappings)"


class Refused(Exception):
    """The document is refused as a whole (it is not read further)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass(frozen=True)
class DuplicateKey:
    line: int
    first_line: int
    loc: Loc
    key: str


@dataclass
class Document:
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    duplicates: list[DuplicateKey] = field(default_factory=list)


class _Bounds(Composer):
    """Python's composer (the one we can watch) over whichever parser there
    is, counting aliases and depth while it composes."""

    _depth = 0
    _aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        events: Any = self  # the parser's half of the loader (Python's or libyaml's)
        if events.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                line = events.peek_event().start_mark.line + 1
                raise Refused(line, f"more than {MAX_ALIASES} aliases (*name): a manifest needs far fewer; write the values out")
            return super().compose_node(parent, index)
        if not events.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            line = events.peek_event().start_mark.line + 1
            raise Refused(line, _TOO_DEEP)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _PyLoader(_Bounds, yaml.SafeLoader):
    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # the Python scanner looks up to 1,024 characters ahead for a simple
        # key, in time quadratic in what it holds: stop '[[[[' as it is read
        super().fetch_flow_collection_start(TokenClass)
        if self.flow_level > MAX_DEPTH:
            raise Refused(self.get_mark().line + 1, _TOO_DEEP)


_CParser: Any = getattr(getattr(yaml, "_yaml", None), "CParser", None)
_BoundedLoader: Any = _PyLoader
if _CParser is not None:
    # libyaml's events, Python's composer and constructor: 4x faster than
    # the Python scanner on a manifest of thousands of agents
    class _CLoader(_Bounds, _CParser, SafeConstructor, Resolver):  # type: ignore[misc]
        def __init__(self, stream: str) -> None:
            _CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    _BoundedLoader = _CLoader


def load(text: str) -> Document:
    """Parse ``text``; raises ``Refused`` or ``yaml.YAMLError``."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Document(None)
        _check_expansion(node)
        duplicates = _duplicate_keys(node, loader)
        data = loader.construct_document(node)
        return Document(data, _line_index(node), duplicates)
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node) -> None:
    """Count the values the aliases add once expanded; refuse a cycle or
    more than MAX_VALUES of them.  Memoised per node: linear in the graph.
    (A large document without aliases is bounded by the file's size.)"""
    sizes: dict[int, int] = {}
    uses: dict[int, int] = {}
    nodes: dict[int, yaml.Node] = {}
    in_progress: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        uses[key] = uses.get(key, 0) + 1
        if key in sizes:
            return sizes[key]
        if key in in_progress:
            raise Refused(node.start_mark.line + 1, "an alias refers to a value that contains it (a cycle)")
        in_progress.add(key)
        nodes[key] = node
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        in_progress.discard(key)
        sizes[key] = total
        return total

    added = size(root) - len(sizes)  # depth is bounded by the composer, so this recursion is too
    if added > MAX_VALUES:
        # name the anchor whose copies cost the most
        worst = max(sizes, key=lambda k: (uses[k] - 1) * sizes[k])
        raise Refused(
            nodes[worst].start_mark.line + 1,
            f"the aliases expand to more than {MAX_VALUES} values (a 'billion laughs' document?)",
        )


def _duplicate_keys(root: yaml.Node, loader: yaml.SafeLoader) -> list[DuplicateKey]:
    found: list[DuplicateKey] = []
    seen_nodes: set[int] = set()

    def walk(node: yaml.Node, loc: Loc) -> None:
        if id(node) in seen_nodes:  # an alias: checked where it was defined
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, child in enumerate(node.value):
                walk(child, (*loc, i))
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                    key = loader.construct_object(key_node)
                    line = key_node.start_mark.line + 1
                    try:
                        if key in first:
                            found.append(DuplicateKey(line, first[key], loc, str(key)))
                        else:
                            first[key] = line
                    except TypeError:  # unhashable: the constructor says so
                        pass
                    walk(value_node, (*loc, str(key)))
                else:
                    walk(value_node, loc)

    walk(root, ())
    return found


def _line_index(root: yaml.Node) -> dict[Loc, int]:
    """Map each path in the document to the (1-based) line where it starts.
    Bounded: the graph was checked by ``_check_expansion``."""
    out: dict[Loc, int] = {}

    def walk(node: yaml.Node, loc: Loc) -> None:
        out.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*loc, str(key.value))
                walk(value, child)
                out[child] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*loc, i))

    walk(root, ())
    return out


def error_line(e: yaml.YAMLError, text: str) -> int:
    """The line a PyYAML error points at (a reader error has only a position)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if mark is not None:
        return int(mark.line) + 1
    position = getattr(e, "position", None)
    if isinstance(position, int):
        return text.count("\n", 0, position) + 1
    return 1

"""output.json_value: the one way --json output is made from the records' types."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import ClassVar, Literal

import pytest

from hybridiso.output import NOT_IN_JSON, OMIT_IF_NONE, json_value


class Colour(enum.Enum):
    RED = "red"


@dataclass(frozen=True)
class Inner:
    where: Path
    kind: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str
    inner: Inner
    parts: tuple[Inner, ...] = ()
    tags: frozenset[str] = frozenset()
    colour: Colour = Colour.RED
    hidden: object = field(default=None, metadata=NOT_IN_JSON)
    maybe: str | None = field(default=None, metadata=OMIT_IF_NONE)
    kept_none: str | None = None

    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("shout",)

    @property
    def shout(self) -> str:
        return self.name.upper()


def test_dataclasses_paths_enums_and_sets_become_json_in_field_order() -> None:
    value = Outer("x", Inner(Path("/a b/c")), (Inner(PurePosixPath("d"), "b"),), frozenset({"z", "y"}), hidden=lambda: None)
    assert json_value(value) == {
        "name": "x",
        "inner": {"where": "/a b/c", "kind": "a"},
        "parts": [{"where": "d", "kind": "b"}],
        "tags": ["y", "z"],
        "colour": "red",
        "kept_none": None,
        "shout": "X",
    }
    assert list(json_value(value)) == ["name", "inner", "parts", "tags", "colour", "kept_none", "shout"]
    assert json_value(Outer("x", Inner(Path("p")), maybe="here"))["maybe"] == "here"


def test_a_type_it_does_not_know_is_a_bug_not_its_repr() -> None:
    with pytest.raises(TypeError, match="cannot print a object"):
        json_value({"a": [object()]})
    with pytest.raises(TypeError):
        json_value(Outer)  # the class, not an instance

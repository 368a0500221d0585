"""Model references: upstream parsing rules and everything that could escape the cache."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from axon.errors import InvalidReferenceError
from modelpkg.refs import ModelRef


@pytest.mark.parametrize(
    ("text", "ns", "name", "version"),
    [
        ("hf/bert-base-uncased", "hf", "bert-base-uncased", "latest"),
        ("hf/bert-base-uncased@v1.2", "hf", "bert-base-uncased", "v1.2"),
        ("hf/google/flan-t5@latest", "hf", "google/flan-t5", "latest"),
        ("tenant-a/model@1.0+build_3", "tenant-a", "model", "1.0+build_3"),
    ],
)
def test_parse(text: str, ns: str, name: str, version: str) -> None:
    ref = ModelRef.parse(text)
    assert (ref.namespace, ref.name, ref.version) == (ns, name, version)
    assert str(ref) == f"{ns}/{name}@{version}"
    assert ref.relpath.as_posix() == f"{ns}/{name}/{version}"


def test_from_parts_upstream_listing_rule() -> None:
    ref = ModelRef.from_parts(("hf", "google", "flan-t5", "latest"))
    assert (ref.namespace, ref.name, ref.version) == ("hf", "google/flan-t5", "latest")
    with pytest.raises(InvalidReferenceError):
        ModelRef.from_parts(("hf", "x"))


def test_archive_name() -> None:
    assert ModelRef.parse("hf/google/flan-t5@v1").archive_name == "hf-google_flan-t5-v1.axon"


@pytest.mark.parametrize(
    "text",
    [
        "noslash",
        "/abs/path",
        "hf/../etc",
        "hf/./x",
        "../x/y",
        "hf//x",
        "hf/x/",
        "hf/x@",
        "hf/x@a@b",
        "hf/x@..",
        "hf/x\x00y",
        "hf/x\ny",
        "hf/.hidden",
        "hf/-option",
        "hf/sp ace",
        "hf/x@v/1",
        "h" * 600 + "/x",
        "hf/" + "n" * 200,
    ],
)
def test_rejects_unsafe(text: str) -> None:
    with pytest.raises(InvalidReferenceError):
        ModelRef.parse(text)


def test_ordering_and_with_version() -> None:
    a, b = ModelRef.parse("a/m@v1"), ModelRef.parse("a/m@v2")
    assert sorted([b, a]) == [a, b]
    assert a.with_version("v2") == b


@given(st.text(max_size=80))
def test_any_accepted_reference_stays_inside_the_models_dir(text: str) -> None:
    try:
        ref = ModelRef.parse(text)
    except InvalidReferenceError:
        return
    parts = ref.relpath.parts
    assert not ref.relpath.is_absolute()
    assert all(p not in ("", ".", "..") and not p.startswith(".") for p in parts)
    assert all(ch.isprintable() for ch in "".join(parts))
    assert ModelRef.parse(str(ref)) == ref  # round trip

"""Model references: upstream parsing rules and everything that could escape the cache."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from axon.errors import InvalidReferenceError
from modelpkg.refs import DEFAULT_NAMESPACE, ModelRef, parse_request


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


# ---- bare names and what the user left out -------------------------------------------------
@pytest.mark.parametrize(
    ("text", "ref", "namespace_given", "version_given"),
    [
        ("federated-model@v1.0", "local/federated-model@v1.0", False, True),
        ("federated-model", "local/federated-model@latest", False, False),
        ("hf/bert", "hf/bert@latest", True, False),
        ("hf/google/flan-t5@v2", "hf/google/flan-t5@v2", True, True),
    ],
)
def test_parse_request_says_what_was_left_out(
    text: str, ref: str, namespace_given: bool, version_given: bool
) -> None:
    asked = parse_request(text)
    assert str(asked.ref) == ref
    assert (asked.namespace_given, asked.version_given) == (namespace_given, version_given)
    assert parse_request(text, default_namespace="team").ref.namespace in ("team", "hf")


@pytest.mark.parametrize("text", ["", "@v1", "-x@v1", ".hidden", "x@", "a@b@c", "x y"])
def test_a_bare_name_is_checked_like_any_other(text: str) -> None:
    with pytest.raises(InvalidReferenceError):
        parse_request(text)


def test_without_a_default_namespace_a_bare_name_is_refused() -> None:
    with pytest.raises(InvalidReferenceError, match="missing namespace"):
        parse_request("federated-model@v1.0", default_namespace=None)
    assert ModelRef.parse("m@v1", default_namespace=DEFAULT_NAMESPACE) == ModelRef(
        "local", "m", "v1"
    )


@given(st.text(max_size=80))
def test_bare_names_stay_inside_the_models_dir(text: str) -> None:
    try:
        ref = parse_request(text).ref
    except InvalidReferenceError:
        return
    assert all(p not in ("", ".", "..") and not p.startswith(".") for p in ref.relpath.parts)
    assert ModelRef.parse(str(ref)) == ref

"""Image references: normalisation and errors as docker's distribution/reference
(ParseNormalizedNamed + TagNameOnly, FamiliarString)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.scheduler._errors import ImageReferenceError
from dockyard.scheduler._reference import Reference, parse_reference

D64 = "sha256:" + "0123456789abcdef" * 4

# text -> (domain, path, tag, digest, str(), familiar())
GOOD = [
    ("alpine", ("docker.io", "library/alpine", "latest", ""),
     "docker.io/library/alpine:latest", "alpine:latest"),
    ("alpine:3.19", ("docker.io", "library/alpine", "3.19", ""),
     "docker.io/library/alpine:3.19", "alpine:3.19"),
    ("library/alpine", ("docker.io", "library/alpine", "latest", ""),
     "docker.io/library/alpine:latest", "alpine:latest"),
    ("docker.io/alpine", ("docker.io", "library/alpine", "latest", ""),
     "docker.io/library/alpine:latest", "alpine:latest"),
    ("docker.io/library/alpine:edge", ("docker.io", "library/alpine", "edge", ""),
     "docker.io/library/alpine:edge", "alpine:edge"),
    ("index.docker.io/library/debian:12", ("docker.io", "library/debian", "12", ""),
     "docker.io/library/debian:12", "debian:12"),
    ("index.docker.io/debian", ("docker.io", "library/debian", "latest", ""),
     "docker.io/library/debian:latest", "debian:latest"),
    ("user/app", ("docker.io", "user/app", "latest", ""),
     "docker.io/user/app:latest", "user/app:latest"),
    ("user/app/sub:v1", ("docker.io", "user/app/sub", "v1", ""),
     "docker.io/user/app/sub:v1", "user/app/sub:v1"),
    ("library/a/b", ("docker.io", "library/a/b", "latest", ""),
     "docker.io/library/a/b:latest", "library/a/b:latest"),
    ("localhost/app", ("localhost", "app", "latest", ""),
     "localhost/app:latest", "localhost/app:latest"),
    ("localhost:5000/a/b:t", ("localhost:5000", "a/b", "t", ""),
     "localhost:5000/a/b:t", "localhost:5000/a/b:t"),
    ("ghcr.io/owner/repo:1.0", ("ghcr.io", "owner/repo", "1.0", ""),
     "ghcr.io/owner/repo:1.0", "ghcr.io/owner/repo:1.0"),
    ("registry.example.com:443/x", ("registry.example.com:443", "x", "latest", ""),
     "registry.example.com:443/x:latest", "registry.example.com:443/x:latest"),
    ("Registry.Example.com/x", ("Registry.Example.com", "x", "latest", ""),
     "Registry.Example.com/x:latest", "Registry.Example.com/x:latest"),
    ("UPPER/x", ("UPPER", "x", "latest", ""), "UPPER/x:latest", "UPPER/x:latest"),
    ("[::1]:5000/x", ("[::1]:5000", "x", "latest", ""),
     "[::1]:5000/x:latest", "[::1]:5000/x:latest"),
    ("127.0.0.1:5000/x:y", ("127.0.0.1:5000", "x", "y", ""),
     "127.0.0.1:5000/x:y", "127.0.0.1:5000/x:y"),
    (f"alpine@{D64}", ("docker.io", "library/alpine", "", D64),
     f"docker.io/library/alpine@{D64}", f"alpine@{D64}"),
    (f"alpine:3.19@{D64}", ("docker.io", "library/alpine", "3.19", D64),
     f"docker.io/library/alpine:3.19@{D64}", f"alpine:3.19@{D64}"),
    (f"ghcr.io/o/r@{D64}", ("ghcr.io", "o/r", "", D64), f"ghcr.io/o/r@{D64}",
     f"ghcr.io/o/r@{D64}"),
    ("a.b/c__d-e.f_g---h", ("a.b", "c__d-e.f_g---h", "latest", ""),
     "a.b/c__d-e.f_g---h:latest", "a.b/c__d-e.f_g---h:latest"),
    ("alpine:Tag_1.2-x", ("docker.io", "library/alpine", "Tag_1.2-x", ""),
     "docker.io/library/alpine:Tag_1.2-x", "alpine:Tag_1.2-x"),
    ("x:" + "t" * 128, ("docker.io", "library/x", "t" * 128, ""),
     "docker.io/library/x:" + "t" * 128, "x:" + "t" * 128),
]


@pytest.mark.parametrize(("text", "fields", "normal", "familiar"), GOOD)
def test_parse_reference(text: str, fields: tuple[str, str, str, str], normal: str,
                         familiar: str) -> None:
    ref = parse_reference(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == fields
    assert str(ref) == normal
    assert ref.familiar() == familiar
    assert parse_reference(str(ref)) == ref
    assert isinstance(ref, Reference)


_FORMAT = "expected [host[:port]/]name[:tag][@algorithm:hex]"

# text -> exact message
BAD = [
    ("", "invalid reference format '': repository name must have at least one component"),
    ("Alpine", "invalid reference format 'Alpine': repository name (library/Alpine) must be "
               "lowercase"),
    ("user/App:1", "invalid reference format 'user/App:1': repository name (user/App) must "
                   "be lowercase"),
    ("0123456789abcdef" * 4, f"invalid reference format '{'0123456789abcdef' * 4}': cannot "
                             "specify 64-byte hexadecimal strings as a repository name"),
    ("alpine:", f"invalid reference format 'alpine:': {_FORMAT}"),
    ("alpine:a:b", f"invalid reference format 'alpine:a:b': {_FORMAT}"),
    (":tag", f"invalid reference format ':tag': {_FORMAT}"),
    ("foo..bar", f"invalid reference format 'foo..bar': {_FORMAT}"),
    ("-foo", f"invalid reference format '-foo': {_FORMAT}"),
    ("foo/", f"invalid reference format 'foo/': {_FORMAT}"),
    ("a_b.com/x", f"invalid reference format 'a_b.com/x': {_FORMAT}"),
    ("alpine:-x", f"invalid reference format 'alpine:-x': {_FORMAT}"),
    ("x:" + "t" * 129, f"invalid reference format 'x:{'t' * 129}': {_FORMAT}"),
    ("x@sha256:abc", f"invalid reference format 'x@sha256:abc': {_FORMAT}"),
    ("x@md5:" + "a" * 32, f"invalid reference format 'x@md5:{'a' * 32}': unsupported digest "
                          "algorithm 'md5'"),
    ("x@sha256:" + "a" * 63 + "aa",
     f"invalid reference format 'x@sha256:{'a' * 65}': invalid checksum digest length"),
    ("x@sha256:" + "A" * 64,
     f"invalid reference format 'x@sha256:{'A' * 64}': invalid checksum digest format"),
    ("a/" + "b" * 250, f"invalid reference format 'a/{'b' * 250}': repository name must not "
                       "be more than 255 characters"),
    ("alpine:t\u00e0g", f"invalid reference format 'alpine:t\u00e0g': {_FORMAT}"),
    ("\u00e0lpine", f"invalid reference format '\u00e0lpine': {_FORMAT}"),
    ("alpine latest", f"invalid reference format 'alpine latest': {_FORMAT}"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_reference(text: str, message: str) -> None:
    with pytest.raises(ImageReferenceError) as caught:
        parse_reference(text)
    assert caught.value.message == message


def test_name_length_counts_the_domain() -> None:
    # docker.io/ (10) + a/ (2) + 243 = 255: the longest accepted Hub name
    assert parse_reference("a/" + "b" * 243).path == "a/" + "b" * 243


@given(st.text(max_size=80))
def test_any_text_parses_or_raises_image_reference_error(text: str) -> None:
    try:
        ref = parse_reference(text)
    except ImageReferenceError:
        return
    assert parse_reference(str(ref)) == ref

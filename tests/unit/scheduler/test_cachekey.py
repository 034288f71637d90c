"""Cache keys: pinned values, what they depend on and what they must never depend on."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import msgpack
import pytest

from dockyard.scheduler._cachekey import (
    KEY_VERSION,
    ContentRead,
    Selector,
    cache_key,
    content_reads,
    source_key,
)
from dockyard.scheduler._graph import Copy, ExecMount, ExecOp, FileOp, MergeOp, SourceOp, Vertex
from dockyard.scheduler._platform import Platform

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64")
IMAGE = Vertex(SourceOp("docker-image://docker.io/library/alpine:3.19"), platform=AMD64)
CONTEXT = Vertex(SourceOp("local://context", (("followpaths", '["a", "b"]'),)))
ROOT = ExecMount("/", input=0, output=True)
RUN_OP = ExecOp(("/bin/sh", "-c", "make"), mounts=(ROOT,))
RUN = Vertex(RUN_OP, (IMAGE.digest,),
             name="[2/3] RUN make", platform=AMD64)
COPY_A = Vertex(FileOp((Copy(1, "/a", "/x"),)), (IMAGE.digest, CONTEXT.digest),
                name="[2/2] COPY a /x", platform=AMD64)
SECRET = ExecMount("/run/secrets/s", type="secret", secret_id="s", mode=0o400, uid=0, gid=0)
RUN_SECRET_OP = ExecOp(("/bin/sh", "-c", "cat /run/secrets/s"), mounts=(ROOT, SECRET))
RUN_SECRET = Vertex(RUN_SECRET_OP, (IMAGE.digest,), platform=AMD64)
IMG_KEY = source_key(IMAGE, "sha256:" + "1" * 64)
CTX_KEY = source_key(CONTEXT, "sha256:" + "2" * 64)
READ_A = ContentRead(1, Selector("/a", wildcard=True))

# (case, computed key, pinned key): an accidental change to the key material fails here.
PINNED: list[tuple[str, str, str]] = [
    ("image source", IMG_KEY,
     "sha256:6e88b4169e015533180fe02b57f22ff4e2d6923d9e08a726927f4c8ad4842950"),
    ("context source", CTX_KEY,
     "sha256:1928ea5f3dd2c2c8106b7458c71d5c9941a49ae1df95116e5b9481b57c0d90f0"),
    ("run", cache_key(RUN, [IMG_KEY]),
     "sha256:a90ab506c9139f990dc096e2919cb901edc7fb0d0c3f232ea0186b0e50ef010b"),
    ("copy from context", cache_key(COPY_A, [IMG_KEY, CTX_KEY], {READ_A: "sha256:aa"}),
     "sha256:0f3a4ca7ff17f41b91f864f8a046bff53905f39f11f042cc399a70f312348cab"),
]


@pytest.mark.parametrize(("case", "computed", "pinned"), PINNED, ids=[p[0] for p in PINNED])
def test_pinned_keys(case: str, computed: str, pinned: str) -> None:
    assert computed == pinned


# (case, key a, key b, equal?): what a key must and must not depend on.
DEPENDS: list[tuple[str, str, str, bool]] = [
    ("the vertex name is not in the key",
     cache_key(RUN, [IMG_KEY]), cache_key(replace(RUN, name="other"), [IMG_KEY]), True),
    ("proxy env is not in the key",
     cache_key(RUN, [IMG_KEY]),
     cache_key(Vertex(replace(RUN_OP, proxy_env=("HTTP_PROXY=http://10.0.0.1:3128",)),
                      RUN.inputs, platform=AMD64), [IMG_KEY]), True),
    ("input digests are not in the key, input keys are",
     cache_key(RUN, [IMG_KEY]), cache_key(Vertex(RUN.op, ("sha256:other",), platform=AMD64),
                                          [IMG_KEY]), True),
    ("an input key changes the key",
     cache_key(RUN, [IMG_KEY]), cache_key(RUN, [CTX_KEY]), False),
    ("the command changes the key",
     cache_key(RUN, [IMG_KEY]),
     cache_key(Vertex(replace(RUN_OP, args=("/bin/sh", "-c", "make all")), RUN.inputs,
                      platform=AMD64), [IMG_KEY]), False),
    ("the platform changes the key",
     cache_key(RUN, [IMG_KEY]), cache_key(replace(RUN, platform=ARM64), [IMG_KEY]), False),
    ("a source's identity changes its key",
     source_key(IMAGE, "sha256:" + "1" * 64), source_key(IMAGE, "sha256:" + "3" * 64), False),
    ("a content read is keyed by its checksum, not the context's key",
     cache_key(COPY_A, [IMG_KEY, CTX_KEY], {READ_A: "sha256:aa"}),
     cache_key(COPY_A, [IMG_KEY, "sha256:another-context"], {READ_A: "sha256:aa"}), True),
    ("a changed checksum changes the key",
     cache_key(COPY_A, [IMG_KEY, CTX_KEY], {READ_A: "sha256:aa"}),
     cache_key(COPY_A, [IMG_KEY, CTX_KEY], {READ_A: "sha256:bb"}), False),
    ("the secret id is in the key (its value never reaches the solver)",
     cache_key(RUN_SECRET, [IMG_KEY]),
     cache_key(Vertex(replace(RUN_SECRET_OP, mounts=(ROOT, replace(SECRET, secret_id="t"))),
                      RUN_SECRET.inputs, platform=AMD64), [IMG_KEY]), False),
]


@pytest.mark.parametrize(("case", "a", "b", "equal"), DEPENDS, ids=[d[0] for d in DEPENDS])
def test_key_depends_on(case: str, a: str, b: str, equal: bool) -> None:
    assert (a == b) is equal


def test_an_image_is_keyed_by_its_manifest_digest_not_its_reference() -> None:
    """The same image reached through another registry name or port is the same source (as
    BuildKit's puller keys it); another manifest digest or platform is not."""
    elsewhere = Vertex(SourceOp("docker-image://127.0.0.1:5001/library/alpine:3.19"),
                       platform=AMD64)
    digest = "sha256:" + "1" * 64
    assert source_key(elsewhere, digest) == source_key(IMAGE, digest)
    assert source_key(elsewhere, "sha256:" + "3" * 64) != source_key(IMAGE, digest)
    arm = Vertex(SourceOp("docker-image://docker.io/library/alpine:3.19"), platform=ARM64)
    assert source_key(arm, digest) != source_key(IMAGE, digest)


def test_key_is_the_documented_material() -> None:
    """The module docstring's formula, spelled out by hand for the RUN vertex."""
    fields = {"args": ["/bin/sh", "-c", "make"], "cwd": "/", "env": [], "hostname": "",
              "mounts": [{"cache_id": "", "dest": "/", "env_name": "", "gid": None,
                          "input": 0, "mode": None, "output": True,
                          "readonly": False, "required": False, "secret_id": "",
                          "selector": "", "sharing": "", "size": None, "ssh_id": "",
                          "type": "bind", "uid": None}],
              "network": "default", "security": "sandbox", "user": ""}
    platform = {"architecture": "amd64", "os": "linux", "variant": ""}
    material = [KEY_VERSION, "exec", fields, platform, [["key", IMG_KEY]]]
    packed = msgpack.packb(material, use_bin_type=True)
    assert cache_key(RUN, [IMG_KEY]) == "sha256:" + hashlib.sha256(packed).hexdigest()


BIND_SRC = ExecMount("/src", input=1, selector="/src", readonly=True)
WHOLE_CTX = ExecMount("/ctx", input=1, readonly=True)
STAGE = Vertex(ExecOp(("true",), mounts=(ROOT,)), (IMAGE.digest,), platform=AMD64)

# (case, vertex, its input vertices, expected content reads)
READS: list[tuple[str, Vertex, list[Vertex], tuple[ContentRead, ...]]] = [
    ("COPY from the context reads a path", COPY_A, [IMAGE, CONTEXT],
     (ContentRead(1, Selector("/a", wildcard=True)),)),
    ("a relative source path is made absolute",
     Vertex(FileOp((Copy(1, "a.txt", "/x", allow_wildcard=False, follow_symlinks=False),)),
            (IMAGE.digest, CONTEXT.digest)), [IMAGE, CONTEXT],
     (ContentRead(1, Selector("/a.txt", follow_symlinks=False)),)),
    ("two COPYs of one path read it once",
     Vertex(FileOp((Copy(1, "/a", "/x"), Copy(1, "/a", "/y"), Copy(1, "/b", "/z"))),
            (IMAGE.digest, CONTEXT.digest)), [IMAGE, CONTEXT],
     (ContentRead(1, Selector("/a", wildcard=True)),
      ContentRead(1, Selector("/b", wildcard=True)))),
    ("COPY --exclude is part of the selector",
     Vertex(FileOp((Copy(1, "/d", "/x", exclude=("*.md",)),)),
            (IMAGE.digest, CONTEXT.digest)), [IMAGE, CONTEXT],
     (ContentRead(1, Selector("/d", wildcard=True, exclude=("*.md",))),)),
    ("COPY --from a stage is keyed by the stage's key",
     Vertex(FileOp((Copy(1, "/a", "/x"),)), (IMAGE.digest, STAGE.digest)), [IMAGE, STAGE], ()),
    ("a bind mount of a context path reads that path",
     Vertex(ExecOp(("make",), mounts=(ROOT, BIND_SRC)), (IMAGE.digest, CONTEXT.digest)),
     [IMAGE, CONTEXT], (ContentRead(1, Selector("/src")),)),
    ("a bind mount of the whole context uses it whole",
     Vertex(ExecOp(("make",), mounts=(ROOT, WHOLE_CTX)), (IMAGE.digest, CONTEXT.digest)),
     [IMAGE, CONTEXT], ()),
    ("a context used whole and through a selector is keyed whole",
     Vertex(ExecOp(("make",), mounts=(ROOT, WHOLE_CTX, BIND_SRC)),
            (IMAGE.digest, CONTEXT.digest)), [IMAGE, CONTEXT], ()),
    ("a merge uses its inputs whole",
     Vertex(MergeOp(), (IMAGE.digest, CONTEXT.digest)), [IMAGE, CONTEXT], ()),
    ("a file op based on the context uses it whole",
     Vertex(FileOp((Copy(0, "/a", "/x"),), base=0), (CONTEXT.digest,)), [CONTEXT], ()),
]


@pytest.mark.parametrize(("case", "vertex", "inputs", "expected"), READS,
                         ids=[r[0] for r in READS])
def test_content_reads(case: str, vertex: Vertex, inputs: list[Vertex],
                       expected: tuple[ContentRead, ...]) -> None:
    assert content_reads(vertex, inputs) == expected

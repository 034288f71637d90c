"""``dockyard build``'s flags: each flag value -> its spec, every bad value -> its exact
``UsageError``, the wire form round trip, and the session (secret values) read at request
time and kept out of the options."""

from __future__ import annotations

import argparse
import io
import os
import re
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from dockyard.cluster._build_cmd import build_request
from dockyard.cluster._build_options import (
    BuildOptions,
    CacheCredentials,
    CacheSpec,
    OutputSpec,
    SecretReader,
    SecretSpec,
    SshSpec,
    gather_options,
    insecure_registries,
    parse_build_args,
    parse_cache,
    parse_epoch,
    parse_insecure_registries,
    parse_network,
    parse_output,
    parse_platform_list,
    parse_progress,
    parse_secret,
    parse_shm_size,
    parse_ssh,
    parse_tag,
    parse_ulimit,
    read_session,
    resolve_outputs,
)
from dockyard.cluster._cli import build_parser
from dockyard.scheduler._build_request import Compression
from dockyard.scheduler._errors import UsageError

ENV = {"TOKEN": "from-env", "SSH_AUTH_SOCK": "/run/agent.sock", "HOME": "/root"}

SECRETS = [
    ("id=a,src=/s/a.txt", SecretSpec("a", "/s/a.txt", None)),
    ("id=a,source=/s/a.txt", SecretSpec("a", "/s/a.txt", None)),
    ("src=/s/key.pem", SecretSpec("key.pem", "/s/key.pem", None)),
    ("id=t,env=TOKEN", SecretSpec("t", None, "TOKEN")),
    ("env=TOKEN", SecretSpec("TOKEN", None, "TOKEN")),
    ("type=env,id=t,src=TOKEN", SecretSpec("t", None, "TOKEN")),
    ("type=env,id=TOKEN", SecretSpec("TOKEN", None, "TOKEN")),
    ("type=file,id=TOKEN", SecretSpec("TOKEN", "TOKEN", None)),
    ("id=TOKEN", SecretSpec("TOKEN", None, "TOKEN")),
    ("id=afile", SecretSpec("afile", "afile", None)),
    ("ID=a,SRC=f", SecretSpec("a", "f", None)),
    ('"id=a,b",src=f', SecretSpec("a,b", "f", None)),
]

OUTPUTS = [
    ("out", OutputSpec("local", "/cwd/out")),
    ("-", OutputSpec("tar", "-")),
    ("type=local,dest=d", OutputSpec("local", "/cwd/d")),
    ("type=tar,dest=-", OutputSpec("tar", "-")),
    ("type=oci,dest=/x/i.tar", OutputSpec("oci", "/x/i.tar")),
    ("type=docker,dest=i.tar", OutputSpec("docker", "/cwd/i.tar")),
    ("type=docker", OutputSpec("docker")),  # no dest: loaded into the Docker engine
    ("type=image,name=reg:5000/a:1,push=true", OutputSpec("image", None, ("reg:5000/a:1",), True)),
    ('type=image,"name=a,b"', OutputSpec("image", None, ("a", "b"), False)),
    ("type=registry,name=a", OutputSpec("image", None, ("a",), True)),
    ("type=image", OutputSpec("image", None, (), False)),
    ("type=image,name=r:5000/a,push=true,registry.insecure=true",
     OutputSpec("image", None, ("r:5000/a",), True, True)),
    ("type=registry,name=a,Registry.Insecure=1", OutputSpec("image", None, ("a",), True, True)),
    ("type=image,name=a,registry.insecure=false", OutputSpec("image", None, ("a",))),
    ("type=image,name=a,unpack=true", OutputSpec("image", None, ("a",))),
    ("type=registry,name=a,unpack=false", OutputSpec("image", None, ("a",), True)),
    # the exporter attributes (issue 11)
    ("type=oci,dest=o,compression=zstd,compression-level=19",
     OutputSpec("oci", "/cwd/o", compression=Compression("zstd", 19))),
    ("type=docker,dest=o,compression=uncompressed,force-compression=true",
     OutputSpec("docker", "/cwd/o", compression=Compression("uncompressed", None, True))),
    ("type=oci,dest=o,compression=uncompressed,compression-level=3",
     OutputSpec("oci", "/cwd/o", compression=Compression("uncompressed"))),
    ("type=image,name=a,compression=gzip,compression-level=0",
     OutputSpec("image", None, ("a",), compression=Compression("gzip", 0))),
    ("type=image,name=a,compression=zstd,oci-mediatypes=false",  # zstd forces OCI types
     OutputSpec("image", None, ("a",), compression=Compression("zstd"))),
    ("type=registry,name=a,oci-mediatypes=false,push-by-digest=true,unpack=false",
     OutputSpec("image", None, ("a",), True, oci_mediatypes=False, push_by_digest=True)),
    ("type=oci,dest=d,tar=false", OutputSpec("oci", "/cwd/d", tar=False)),
    ('type=oci,dest=o,"name=a:1,b:2",rewrite-timestamp=true',
     OutputSpec("oci", "/cwd/o", ("a:1", "b:2"), rewrite_timestamp=True)),
    ("type=local,dest=d,platform-split=false", OutputSpec("local", "/cwd/d",
                                                          platform_split=False)),
    ("type=tar,dest=-,platform-split=true", OutputSpec("tar", "-", platform_split=True)),
]

SSH = [
    ("default", SshSpec("default", ("/run/agent.sock",))),
    ("default=/a.sock", SshSpec("default", ("/a.sock",))),
    ("git=/a.sock,/b.sock", SshSpec("git", ("/a.sock", "/b.sock"))),
    ("git", SshSpec("git", ("/run/agent.sock",))),
]

CACHE_TO = partial(parse_cache, "--cache-to")
CACHE_FROM = partial(parse_cache, "--cache-from")
S3 = "type=s3,bucket=b,region=eu-west-1"

# (parser, value) -> spec
CACHES: list[tuple[Any, str, CacheSpec]] = [
    (CACHE_TO, S3, CacheSpec("s3", (("bucket", "b"), ("region", "eu-west-1")))),
    (CACHE_TO, "type=s3,bucket=b,prefix=ci/,endpoint_url=http://127.0.0.1:9000,"
               "use_path_style=TRUE,mode=max,ignore-error=true",
     CacheSpec("s3", (("bucket", "b"), ("endpoint_url", "http://127.0.0.1:9000"),
                      ("prefix", "ci/"), ("use_path_style", "true")), "max", True)),
    (CACHE_FROM, S3 + ",use_path_style=0",
     CacheSpec("s3", (("bucket", "b"), ("region", "eu-west-1"),
                      ("use_path_style", "false")))),
    (CACHE_TO, "type=local,dest=/c", CacheSpec("local", (("path", "/c"),))),
    (CACHE_FROM, "type=local,src=/c/../d", CacheSpec("local", (("path", "/d"),))),
    # a bare reference is a registry cache (or an image with an inline cache)
    (CACHE_FROM, "user/app:cache", CacheSpec("registry", (("ref", "user/app:cache"),))),
    (CACHE_FROM, "type=registry,ref=r.io/c", CacheSpec("registry", (("ref", "r.io/c"),))),
    (CACHE_TO, "type=registry,ref=r.io/c:1,mode=max",
     CacheSpec("registry", (("image_manifest", "true"), ("oci_mediatypes", "true"),
                            ("ref", "r.io/c:1")), "max")),
    (CACHE_TO, "r.io/c:1", CacheSpec("registry", (("image_manifest", "true"),
                                                  ("oci_mediatypes", "true"),
                                                  ("ref", "r.io/c:1")))),
    (CACHE_TO, "type=registry,ref=r.io/c,oci-mediatypes=false,compression=uncompressed",
     CacheSpec("registry", (("compression", "none"), ("image_manifest", "false"),
                            ("oci_mediatypes", "false"), ("ref", "r.io/c")))),
    (CACHE_TO, "type=registry,ref=r.io/c,image-manifest=false,compression=zstd,"
               "ignore-error=true",
     CacheSpec("registry", (("compression", "zstd"), ("image_manifest", "false"),
                            ("oci_mediatypes", "true"), ("ref", "r.io/c")), "min", True)),
    (CACHE_TO, "type=inline", CacheSpec("inline")),
    (CACHE_TO, "type=inline,mode=min", CacheSpec("inline")),
]

# (parser, value, exact message)
ERRORS: list[tuple[Any, str, str]] = [
    (CACHE_TO, "bucket=b", "invalid --cache-to 'bucket=b': type is required\nhint: use "
                           "type=registry, type=inline, type=s3 or type=local"),
    (CACHE_TO, "type=gha", "invalid --cache-to 'type=gha': unsupported cache type 'gha'\n"
                           "hint: use type=registry, type=inline, type=s3 or type=local"),
    (CACHE_TO, "type=registry", "invalid --cache-to 'type=registry': ref is required for "
                                "the registry cache\nhint: use --cache-to type=registry,"
                                "ref=REGISTRY/REPOSITORY:TAG"),
    (CACHE_FROM, "type=registry,ref=r.io/Bad", "invalid --cache-from 'type=registry,"
                                               "ref=r.io/Bad': invalid reference format "
                                               "'r.io/Bad': repository name (Bad) must be "
                                               "lowercase"),
    (CACHE_TO, "r.io/c@sha256:" + "a" * 64, "invalid --cache-to 'type=registry,ref=r.io/c@"
                                            "sha256:" + "a" * 64 + "': a cache is written "
                                            "under a tag, not a digest\nhint: name the cache "
                                            "REPOSITORY:TAG"),
    (CACHE_TO, "type=registry,ref=r.io/c,image-manifest=true,oci-mediatypes=false",
     "invalid --cache-to 'type=registry,ref=r.io/c,image-manifest=true,oci-mediatypes=false'"
     ": image-manifest=true needs OCI media types\nhint: drop oci-mediatypes=false, or add "
     "image-manifest=false"),
    (CACHE_TO, "type=registry,ref=r.io/c,compression=estargz",
     "invalid --cache-to 'type=registry,ref=r.io/c,compression=estargz': compression must be "
     "gzip, zstd or uncompressed, not 'estargz' (estargz is not produced by dockyard)"),
    (CACHE_TO, "type=registry,ref=r.io/c,compression-level=9",
     "invalid --cache-to 'type=registry,ref=r.io/c,compression-level=9': compression-level is "
     "not supported: layers are compressed at one level (gzip 6, zstd 3, BuildKit's defaults) "
     "so that a "
     "layer's digest depends on its files alone"),
    (CACHE_FROM, "type=registry,ref=r.io/c,compression=gzip",
     "invalid --cache-from 'type=registry,ref=r.io/c,compression=gzip': unsupported "
     "attribute 'compression'"),
    (CACHE_TO, "type=inline,mode=max", "invalid --cache-to 'type=inline,mode=max': an inline "
                                       "cache holds the image's own layers only (mode=min)\n"
                                       "hint: use --cache-to type=registry,ref=REF,mode=max "
                                       "for every step"),
    (CACHE_TO, "type=inline,ref=x", "invalid --cache-to 'type=inline,ref=x': unsupported "
                                    "attribute 'ref'"),
    (CACHE_FROM, "type=inline", "invalid --cache-from 'type=inline': an inline cache is read "
                                "from its image\nhint: use --cache-from IMAGE "
                                "(type=registry,ref=IMAGE)"),
    (CACHE_TO, "type=s3,region=r", "invalid --cache-to 'type=s3,region=r': bucket is "
                                   "required for the s3 cache"),
    (CACHE_TO, S3 + ",mode=all", f"invalid --cache-to '{S3},mode=all': mode must be min or "
                                 "max, not 'all'"),
    (CACHE_FROM, S3 + ",mode=max", f"invalid --cache-from '{S3},mode=max': unsupported "
                                   "attribute 'mode'"),
    (CACHE_TO, S3 + ",ignore-error=maybe", f"invalid --cache-to '{S3},ignore-error=maybe': "
                                           "ignore-error must be true or false, not 'maybe'"),
    (CACHE_TO, S3 + ",use_path_style=yes", f"invalid --cache-to '{S3},use_path_style=yes': "
                                           "use_path_style must be true or false, not 'yes'"),
    (CACHE_TO, S3 + ",name=x", f"invalid --cache-to '{S3},name=x': unsupported attribute "
                               "'name'"),
    (CACHE_TO, S3 + ",secret_access_key=k",
     f"invalid --cache-to '{S3},secret_access_key=k': secret_access_key is not taken from "
     "the command line\nhint: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile or "
     "an instance role"),
    (CACHE_TO, "type=local,src=/c", "invalid --cache-to 'type=local,src=/c': unsupported "
                                    "attribute 'src'"),
    (CACHE_FROM, "type=local", "invalid --cache-from 'type=local': src directory is "
                               "required for the local cache"),
    (CACHE_TO, "type=local,dest=", "invalid --cache-to 'type=local,dest=': dest directory is "
                                   "required for the local cache"),
    (parse_secret, "id=a,bogus=1", "invalid --secret 'id=a,bogus=1': unexpected key 'bogus' "
                                   "in 'bogus=1'"),
    (parse_secret, "id=a,nokey", "invalid --secret 'id=a,nokey': invalid field 'nokey' must "
                                 "be a key=value pair"),
    (parse_secret, "type=ssh,id=a", "invalid --secret 'type=ssh,id=a': unsupported secret "
                                    "type 'ssh'"),
    (parse_secret, "type=file", "invalid --secret 'type=file': secret missing ID\n"
                                "hint: use --secret id=ID,src=FILE or --secret id=ID,env=VAR"),
    (parse_secret, '"id=a', "invalid --secret '\"id=a': failed to parse csv: unexpected end "
                            "of data"),
    (parse_ssh, "=x", "invalid --ssh '=x': the id is empty\n"
                      "hint: use --ssh default or --ssh ID=SOCKET"),
    (parse_ssh, "git=", "invalid --ssh 'git=': no socket or key given for 'git'"),
    (parse_output, "", "invalid --output '': the value is empty"),
    (parse_output, "dest=x", "invalid --output 'dest=x': type is required for output"),
    (parse_output, "type=cacheonly", "invalid --output 'type=cacheonly': unsupported output "
                                     "type 'cacheonly'\nhint: use one of local, tar, oci, "
                                     "docker, image, registry"),
    (parse_output, "type=local", "invalid --output 'type=local': dest directory is required "
                                 "for the local exporter"),
    (parse_output, "type=oci", "invalid --output 'type=oci': dest file is required for the "
                               "oci exporter"),
    (parse_output, "type=local,dest=-", "invalid --output 'type=local,dest=-': the local "
                                        "exporter writes a directory, not stdout\nhint: use "
                                        "type=tar,dest=- for a stream"),
    (parse_output, "type=tar,dest=x,compression=zstd",
     "invalid --output 'type=tar,dest=x,compression=zstd': unsupported attribute "
     "'compression' for the tar exporter\nhint: it takes dest, platform-split"),
    (parse_output, "type=oci,dest=x,compression=estargz",
     "invalid --output 'type=oci,dest=x,compression=estargz': unsupported compression type "
     "'estargz'\nhint: use one of gzip, zstd, uncompressed"),
    (parse_output, "type=oci,dest=x,compression=zstd,compression-level=23",
     "invalid --output 'type=oci,dest=x,compression=zstd,compression-level=23': "
     "compression-level '23' is not a zstd level\nhint: use a level from 0 to 22"),
    (parse_output, "type=oci,dest=x,compression-level=fast",
     "invalid --output 'type=oci,dest=x,compression-level=fast': compression-level 'fast' "
     "is not a gzip level\nhint: use a level from 0 to 9"),
    (parse_output, "type=oci,dest=x,force-compression=yes",
     "invalid --output 'type=oci,dest=x,force-compression=yes': force-compression must be "
     "true or false, not 'yes'"),
    (parse_output, "type=oci,dest=-,tar=false",
     "invalid --output 'type=oci,dest=-,tar=false': the oci exporter with tar=false writes "
     "a directory, not stdout\nhint: drop tar=false to write the layout as a tar"),
    (parse_output, "type=oci,dest=x,push-by-digest=true",
     "invalid --output 'type=oci,dest=x,push-by-digest=true': unsupported attribute "
     "'push-by-digest' for the oci exporter\nhint: it takes dest, name, tar, compression, "
     "compression-level, force-compression, oci-mediatypes, rewrite-timestamp"),
    (parse_output, "type=image,name=a,push=maybe",
     "invalid --output 'type=image,name=a,push=maybe': push must be true or false, not "
     "'maybe'"),
    (parse_output, "type=image,name=a,registry.insecure=yes",
     "invalid --output 'type=image,name=a,registry.insecure=yes': registry.insecure must be "
     "true or false, not 'yes'"),
    (parse_output, "type=image,name=a,unpack=1x",
     "invalid --output 'type=image,name=a,unpack=1x': unpack must be true or false, not "
     "'1x'"),
    (parse_output, "type=docker,unpack=true",
     "invalid --output 'type=docker,unpack=true': unsupported attribute 'unpack' for the "
     "docker exporter\nhint: it takes dest, name, tar, compression, compression-level, "
     "force-compression, oci-mediatypes, rewrite-timestamp"),
    (parse_output, "type=tar,dest=x,registry.insecure=true",
     "invalid --output 'type=tar,dest=x,registry.insecure=true': unsupported attribute "
     "'registry.insecure' for the tar exporter\nhint: it takes dest, platform-split"),
    (parse_output, "type=image,name=A:b", "invalid --output: invalid reference format "
                                          "'A:b': repository name (library/A) must be "
                                          "lowercase"),
    (parse_tag, "Bad/Name", "invalid --tag: invalid reference format 'Bad/Name': "
                          "repository name (Name) must be lowercase"),
    (parse_tag, "", "invalid --tag: invalid reference format '': repository "
                  "name must have at least one component"),
    (parse_progress, "fancy", "invalid --progress 'fancy': unknown progress mode\n"
                              "hint: use one of auto, plain, tty, rawjson, quiet"),
]


@pytest.mark.parametrize(("value", "expected"), SECRETS)
def test_secret(value: str, expected: SecretSpec) -> None:
    assert parse_secret(value, ENV) == expected


@pytest.mark.parametrize(("value", "expected"), OUTPUTS)
def test_output(value: str, expected: OutputSpec, monkeypatch: pytest.MonkeyPatch,
                tmp_path: Path) -> None:
    monkeypatch.setattr("os.getcwd", lambda: "/cwd")
    assert parse_output(value) == expected


@pytest.mark.parametrize(("value", "expected"), SSH)
def test_ssh(value: str, expected: SshSpec) -> None:
    assert parse_ssh(value, ENV) == expected


def test_ssh_default_without_agent() -> None:
    with pytest.raises(UsageError) as caught:
        parse_ssh("default", {})
    assert str(caught.value) == ("invalid --ssh 'default': invalid empty ssh agent socket: "
                                 "make sure SSH_AUTH_SOCK is set")


@pytest.mark.parametrize(("parse", "value", "expected"), CACHES)
def test_cache(parse: Any, value: str, expected: CacheSpec) -> None:
    assert parse(value) == expected


def test_cache_flags_travel_in_the_options() -> None:
    args = _args(["/c"])
    args.cache_to, args.cache_from = [S3 + ",mode=max"], [S3, "type=local,src=/l"]
    options = gather_options(args, ENV)
    assert options.cache_to == (CACHE_TO(S3 + ",mode=max"),)
    assert options.cache_from == (CACHE_FROM(S3), CacheSpec("local", (("path", "/l"),)))
    assert BuildOptions.from_wire(options.to_wire()) == options
    earlier = {k: v for k, v in options.to_wire().items() if not k.startswith("cache_")}
    assert BuildOptions.from_wire(earlier).cache_from == ()


@pytest.mark.parametrize(("value", "expected"), OUTPUTS)
def test_output_attributes_travel_in_the_options(value: str, expected: OutputSpec) -> None:
    options = BuildOptions("/c", outputs=(parse_output(value),))
    assert BuildOptions.from_wire(options.to_wire()) == options
    wire = options.to_wire()
    wire["outputs"] = [item[:5] for item in wire["outputs"]]  # a client before issue 11
    assert BuildOptions.from_wire(wire).outputs[0].compression == Compression()


@pytest.mark.parametrize(("parse", "value", "message"), ERRORS)
def test_bad_values(parse: Any, value: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse(value)
    assert str(caught.value) == message


# (outputs, tags, --push) -> outputs, or the exact error
RESOLVE: list[tuple[list[OutputSpec], list[str], bool, Any]] = [
    ([], ["a:1"], True, (OutputSpec("image", None, ("a:1",), True),)),
    ([OutputSpec("image")], ["a", "b"], False, (OutputSpec("image", None, ("a", "b")),)),
    ([OutputSpec("image", None, ("n",))], ["a"], True, (OutputSpec("image", None, ("n",), True),)),
    ([OutputSpec("tar", "/t")], [], False, (OutputSpec("tar", "/t"),)),
    # the tags name oci and docker outputs without a name=; attributes are kept
    ([OutputSpec("oci", "/o"), OutputSpec("docker", "/d", ("n",))], ["a"], False,
     (OutputSpec("oci", "/o", ("a",)), OutputSpec("docker", "/d", ("n",)))),
    ([OutputSpec("image", compression=Compression("zstd"), push_by_digest=True)], ["a"],
     True, (OutputSpec("image", None, ("a",), True, compression=Compression("zstd"),
                       push_by_digest=True),)),
    ([], [], True, "tag is needed when pushing to registry\nhint: add -t NAME or name=NAME"),
    ([OutputSpec("image")], [], False, "an image output needs a name\n"
                                       "hint: add -t NAME or name=NAME"),
    ([OutputSpec("tar", "-"), OutputSpec("oci", "-")], [], False,
     "only one --output can write to stdout (dest=-)"),
]


@pytest.mark.parametrize(("outputs", "tags", "push", "expected"), RESOLVE)
def test_resolve_outputs(outputs: list[OutputSpec], tags: list[str], push: bool,
                         expected: Any) -> None:
    if isinstance(expected, str):
        with pytest.raises(UsageError) as caught:
            resolve_outputs(outputs, tags, push)
        assert str(caught.value) == expected
    else:
        assert resolve_outputs(outputs, tags, push) == expected


DOCKER_LOAD = OutputSpec("docker")
# (outputs, tags, --push, --load) -> outputs: --load adds one docker output without dest
# unless one is there, beside any other output (buildx 0.13+: several exporters)
# (the -t tags name a docker output without name=, as they name every image output)
LOAD: list[tuple[list[OutputSpec], list[str], bool, bool, tuple[OutputSpec, ...]]] = [
    ([], ["a:1"], False, True, (OutputSpec("docker", None, ("a:1",)),)),
    ([], [], False, True, (DOCKER_LOAD,)),
    ([DOCKER_LOAD], ["a"], False, True, (OutputSpec("docker", None, ("a",)),)),
    ([OutputSpec("docker", "/d.tar")], [], False, True,
     (OutputSpec("docker", "/d.tar"), DOCKER_LOAD)),
    ([OutputSpec("local", "/l")], [], False, True, (OutputSpec("local", "/l"), DOCKER_LOAD)),
    ([], ["a:1"], True, True, (OutputSpec("image", None, ("a:1",), True),
                               OutputSpec("docker", None, ("a:1",)))),
    ([DOCKER_LOAD], [], False, False, (DOCKER_LOAD,)),
]


@pytest.mark.parametrize(("outputs", "tags", "push", "load", "expected"), LOAD)
def test_load_adds_a_docker_output(outputs: list[OutputSpec], tags: list[str], push: bool,
                                   load: bool, expected: tuple[OutputSpec, ...]) -> None:
    resolved = resolve_outputs(outputs, tags, push, load)
    assert resolved == expected
    assert [o.loads for o in resolved] == [o.type == "docker" and o.dest is None
                                           for o in expected]


# argv -> the exact refusal: a docker output holds one platform (buildx's words)
DOCKER_PLATFORMS = [
    (["--load"], "docker exporter does not currently support exporting manifest lists\n"
                 "hint: build one --platform to --load it, or push the platforms with "
                 "--push, or write them with -o type=oci,dest=FILE"),
    (["-o", "type=docker"], "docker exporter does not currently support exporting "
                            "manifest lists\nhint: build one --platform to --load it, or "
                            "push the platforms with --push, or write them with "
                            "-o type=oci,dest=FILE"),
    (["-o", "type=docker,dest=/d.tar"], "docker exporter does not support exporting "
                                        "manifest lists, use the oci exporter instead\n"
                                        "hint: build one --platform, or use "
                                        "-o type=oci,dest=FILE"),
]


@pytest.mark.parametrize(("argv", "message"), DOCKER_PLATFORMS)
def test_a_docker_output_of_several_platforms_is_refused(argv: list[str], message: str,
                                                         tmp_path: Path) -> None:
    platforms = ["--platform", "linux/amd64,linux/arm64"]
    with pytest.raises(UsageError) as caught:
        gather_options(_args([*argv, *platforms, str(tmp_path)]), ENV)
    assert str(caught.value) == message
    one = gather_options(_args([*argv, "--platform", "linux/arm64", str(tmp_path)]), ENV)
    assert [o.type for o in one.outputs] == ["docker"]


def test_load_travels_as_a_docker_output_without_dest(tmp_path: Path) -> None:
    options = gather_options(_args(["--load", "-t", "app:1", str(tmp_path)]), ENV)
    assert options.outputs == (OutputSpec("docker", None, ("app:1",)),)
    assert options.tags == ("app:1",)
    assert BuildOptions.from_wire(options.to_wire()).outputs[0].loads


EPOCHS: list[tuple[dict[str, str], dict[str, str], Any]] = [
    ({}, {}, None),
    ({}, {"SOURCE_DATE_EPOCH": "100"}, 100),
    ({"SOURCE_DATE_EPOCH": "5"}, {"SOURCE_DATE_EPOCH": "100"}, 5),
    ({"SOURCE_DATE_EPOCH": ""}, {}, None),
    ({"SOURCE_DATE_EPOCH": "-1"}, {}, "invalid SOURCE_DATE_EPOCH '-1': not a unix time in "
                                      "seconds"),
    ({}, {"SOURCE_DATE_EPOCH": "soon"}, "invalid SOURCE_DATE_EPOCH 'soon': not a unix time "
                                        "in seconds"),
]


@pytest.mark.parametrize(("args", "environ", "expected"), EPOCHS)
def test_epoch(args: dict[str, str], environ: dict[str, str], expected: Any) -> None:
    if isinstance(expected, str):
        with pytest.raises(UsageError) as caught:
            parse_epoch(args, environ)
        assert str(caught.value) == expected
    else:
        assert parse_epoch(args, environ) == expected


def test_build_args_and_platforms() -> None:
    assert parse_build_args(["A=1", "TOKEN", "MISSING", "A=2", "B=x=y"], ENV) == (
        ("A", "2"), ("TOKEN", "from-env"), ("B", "x=y"))
    assert parse_platform_list(["linux/amd64,linux/arm64", "linux/amd64"]) == (
        "linux/amd64", "linux/arm64")
    with pytest.raises(UsageError):
        parse_build_args(["=v"], ENV)


def _args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["build", *argv])


def test_gather_options_and_wire_round_trip(tmp_path: Path) -> None:
    argv = ["-f", str(tmp_path / "sub" / "Dockerfile.x"), "-t", "a:1", "-t", "b",
            "--platform", "linux/arm64", "--target", "t", "--build-arg",
            "SOURCE_DATE_EPOCH=7", "--secret", "id=t,env=TOKEN", "--ssh", "default",
            "-o", "type=oci,dest=/o.tar", "--push", "--no-cache", "--progress", "plain",
            "--metadata-file", "/m.json", str(tmp_path)]
    options = gather_options(_args(argv), ENV)
    assert options == BuildOptions(
        context=str(tmp_path), filename="sub/Dockerfile.x", platforms=("linux/arm64",),
        target="t", build_args=(("SOURCE_DATE_EPOCH", "7"),),
        secrets=(SecretSpec("t", None, "TOKEN"),),
        ssh=(SshSpec("default", ("/run/agent.sock",)),),
        outputs=(OutputSpec("oci", "/o.tar", ("a:1", "b")),
                 OutputSpec("image", None, ("a:1", "b"), True)),
        tags=("a:1", "b"), no_cache=True, progress="plain", metadata_file="/m.json", epoch=7)
    assert BuildOptions.from_wire(options.to_wire()) == options


def test_wire_version_is_checked() -> None:
    wire = BuildOptions(context="/c").to_wire() | {"version": 99}
    with pytest.raises(UsageError) as caught:
        BuildOptions.from_wire(wire)
    assert str(caught.value) == ("build options of version 99 (this dockyard reads version "
                                 "1)\nhint: use the same dockyard version on the client and "
                                 "the service")


def test_secret_values_only_in_the_session(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_bytes(b"file-secret-value")
    argv = ["--secret", f"id=f,src={tmp_path / 's.txt'}", "--secret", "id=t,env=TOKEN",
            str(tmp_path)]
    environ = ENV | {"TOKEN": "env-secret-value"}
    options = gather_options(_args(argv), environ)
    session = read_session(options, environ)
    wire = repr(options.to_wire()) + repr(options) + repr(session)
    assert "secret-value" not in wire
    assert session == {"secret_ids": ["f", "t"], "ssh_ids": []}
    reader = SecretReader(options.secrets, environ)
    assert "secret-value" not in repr(reader)
    assert reader({"id": "f"}) == b"file-secret-value"
    assert reader({"id": "t"}) == b"env-secret-value"
    assert reader({"id": "unknown"}) is None


def test_secret_is_read_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"first")
    spec = SecretSpec("s", str(path), None)
    read_session(BuildOptions(context="/c", secrets=(spec,)), ENV)
    path.write_bytes(b"changed")
    assert SecretReader((spec,), ENV)({"id": "s"}) == b"changed"


def _fifo(tmp_path: Path) -> str:
    os.mkfifo(tmp_path / "fifo")
    return str(tmp_path / "fifo")


def _big(tmp_path: Path) -> str:
    (tmp_path / "big").write_bytes(b"x" * (500 * 1024 + 1))
    return str(tmp_path / "big")


SESSION_ERRORS = [
    (lambda _: SecretSpec("t", None, "UNSET"),
     "secret 't': environment variable 'UNSET' is not set\n"
     "hint: export it, or use --secret id=ID,src=FILE"),
    (lambda _: SecretSpec("f", "/nonexistent/f", None),
     "secret 'f': cannot read '/nonexistent/f': No such file or directory"),
    (lambda t: SecretSpec("big", _big(t), None),
     "secret 'big' too big. max size 500KB ('{tmp}/big')"),
    (lambda t: SecretSpec("fifo", _fifo(t), None),
     "secret 'fifo': '{tmp}/fifo' is not a regular file\n"
     "hint: a secret is read from a file or an environment variable"),
    (lambda t: SecretSpec("dir", str(t), None),
     "secret 'dir': '{tmp}' is not a regular file\n"
     "hint: a secret is read from a file or an environment variable"),
    (lambda _: SecretSpec("e", None, "LARGE"),
     "secret 'e' too big. max size 500KB ($LARGE)"),
]


@pytest.mark.parametrize(("make", "message"), SESSION_ERRORS)
def test_session_errors(tmp_path: Path, make: Any, message: str) -> None:
    """The same errors up front (read_session) and when asked (SecretReader)."""
    spec = make(tmp_path)
    environ = ENV | {"LARGE": "x" * (500 * 1024 + 1)}
    expected = message.format(tmp=tmp_path)
    with pytest.raises(UsageError) as caught:
        read_session(BuildOptions(context="/c", secrets=(spec,)), environ)
    assert str(caught.value) == expected
    with pytest.raises(UsageError) as caught:
        SecretReader((spec,), environ)({"id": spec.id})
    assert str(caught.value) == expected


def test_secret_grown_after_the_check_is_refused_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"small")
    spec = SecretSpec("s", str(path), None)
    read_session(BuildOptions(context="/c", secrets=(spec,)), ENV)
    path.write_bytes(b"x" * (600 * 1024))
    with pytest.raises(UsageError, match="too big"):
        SecretReader((spec,), ENV)({"id": "s"})


def test_secret_get_without_an_id() -> None:
    with pytest.raises(UsageError, match="a secret.get ask without a secret id"):
        SecretReader((), ENV)({"id": 3})


# (DOCKYARD_INSECURE_REGISTRIES, image outputs) -> the build's insecure registries, or the
# exact error
INSECURE: list[tuple[str, list[OutputSpec], Any]] = [
    ("", [], ()),
    (" reg.local:5000 , 10.0.0.7,,reg.local:5000", [], ("reg.local:5000", "10.0.0.7")),
    ("[fd00::1]:5000", [], ("[fd00::1]:5000",)),
    ("a:1", [OutputSpec("image", None, ("b.example:5000/x:1", "a:1/y", "plain"), True, True),
             OutputSpec("image", None, ("c.example/z",), True)],
     ("a:1", "b.example:5000", "docker.io")),
    ("", [OutputSpec("tar", "/t", (), False, True)], ()),
    ("http://reg:5000", [], "invalid DOCKYARD_INSECURE_REGISTRIES entry 'http://reg:5000': "
                            "not a host or host:port\nhint: list registries like "
                            "registry.local:5000,10.0.0.7"),
    ("reg:http", [], "invalid DOCKYARD_INSECURE_REGISTRIES entry 'reg:http': not a host or "
                     "host:port\nhint: list registries like registry.local:5000,10.0.0.7"),
    ("reg:70000", [], "invalid DOCKYARD_INSECURE_REGISTRIES entry 'reg:70000': not a host or "
                      "host:port\nhint: list registries like registry.local:5000,10.0.0.7"),
    (":5000", [], "invalid DOCKYARD_INSECURE_REGISTRIES entry ':5000': not a host or "
                  "host:port\nhint: list registries like registry.local:5000,10.0.0.7"),
]


@pytest.mark.parametrize(("listed", "outputs", "expected"), INSECURE)
def test_insecure_registries(listed: str, outputs: list[OutputSpec], expected: Any) -> None:
    environ = {"DOCKYARD_INSECURE_REGISTRIES": listed}
    if isinstance(expected, str):
        with pytest.raises(UsageError) as caught:
            insecure_registries(outputs, environ)
        assert str(caught.value) == expected
    else:
        assert insecure_registries(outputs, environ) == expected
        listed_only = parse_insecure_registries(listed)
        assert expected[:len(listed_only)] == listed_only


def test_insecure_registries_travel_in_the_options(tmp_path: Path) -> None:
    argv = ["-t", "reg.example:5000/app:1",
            "-o", "type=image,push=true,registry.insecure=true", str(tmp_path)]
    environ = ENV | {"DOCKYARD_INSECURE_REGISTRIES": "pull.example"}
    options = gather_options(_args(argv), environ)
    assert options.outputs == (
        OutputSpec("image", None, ("reg.example:5000/app:1",), True, True),)
    assert options.insecure_registries == ("pull.example", "reg.example:5000")
    wire = options.to_wire()
    assert wire["insecure_registries"] == ["pull.example", "reg.example:5000"]
    assert BuildOptions.from_wire(wire) == options


def test_wire_of_an_earlier_client_reads_as_secure() -> None:
    wire = BuildOptions(context="/c", outputs=(OutputSpec("image", None, ("a",), True),)
                        ).to_wire()
    del wire["insecure_registries"]
    wire["outputs"] = [item[:4] for item in wire["outputs"]]
    assert BuildOptions.from_wire(wire) == BuildOptions(
        context="/c", outputs=(OutputSpec("image", None, ("a",), True),))


def test_session_names_ssh_ids_never_their_paths() -> None:
    options = BuildOptions(context="/c", ssh=(SshSpec("git", ("/k/id_ed25519",)),
                                              SshSpec("default", ("/tmp/agent.sock",))))
    session = read_session(options, ENV)
    assert session == {"secret_ids": [], "ssh_ids": ["git", "default"]}


AWS = {"AWS_ACCESS_KEY_ID": "AKIAKEY", "AWS_SECRET_ACCESS_KEY": "sk", "AWS_SESSION_TOKEN": "",
       "AWS_REGION": "eu-west-3", "AWS_PROFILE": "dev", "TOKEN": "x"}
S3_CACHE = CacheSpec("s3", (("bucket", "b"),))
LOCAL_CACHE = CacheSpec("local", (("dest", "/d"),))
CREDENTIAL_CASES = [
    ("s3 cache-to: the set AWS_* only", BuildOptions(context="/c", cache_to=(S3_CACHE,)), AWS,
     {"AWS_ACCESS_KEY_ID": "AKIAKEY", "AWS_SECRET_ACCESS_KEY": "sk",
      "AWS_REGION": "eu-west-3"}),
    ("s3 cache-from", BuildOptions(context="/c", cache_from=(S3_CACHE,)),
     {"AWS_DEFAULT_REGION": "us-east-2"}, {"AWS_DEFAULT_REGION": "us-east-2"}),
    ("s3 cache, client without credentials", BuildOptions(context="/c", cache_to=(S3_CACHE,)),
     {"HOME": "/root"}, {}),
    ("no s3 cache", BuildOptions(context="/c", cache_to=(LOCAL_CACHE,)), AWS,
     "this build uses no S3 cache: no credentials are forwarded\nhint: use the same "
     "dockyard version on the client and the cluster"),
    ("no cache", BuildOptions(context="/c"), AWS,
     "this build uses no S3 cache: no credentials are forwarded\nhint: use the same "
     "dockyard version on the client and the cluster"),
]


@pytest.mark.parametrize(("options", "environ", "expected"), [c[1:] for c in CREDENTIAL_CASES],
                         ids=[c[0] for c in CREDENTIAL_CASES])
def test_cache_credentials_only_for_an_s3_cache(options: BuildOptions, environ: dict[str, str],
                                               expected: Any) -> None:
    handler = CacheCredentials(options, environ)
    assert repr(handler) in ("<CacheCredentials s3=True>", "<CacheCredentials s3=False>")
    if isinstance(expected, str):
        with pytest.raises(UsageError) as caught:
            handler({})
        assert str(caught.value) == expected
    else:
        assert handler({}) == expected


def test_allow_grants_entitlements_and_crosses_the_wire(tmp_path: Path) -> None:
    options = gather_options(_args(["--allow", "network.host", "--allow",
                                     "security.insecure,network.host", str(tmp_path)]), ENV)
    assert options.allow == ("network.host", "security.insecure")
    assert BuildOptions.from_wire(options.to_wire()) == options
    earlier = {k: v for k, v in options.to_wire().items() if k != "allow"}
    assert BuildOptions.from_wire(earlier).allow == ()  # an earlier client grants nothing
    with pytest.raises(UsageError, match="invalid --allow 'device': unknown entitlement"):
        gather_options(_args(["--allow", "device", str(tmp_path)]), ENV)


@pytest.mark.parametrize(("value", "expected"), [
    ("nofile=1062:1062", ("nofile", 1062, 1062)),
    ("nofile=1024", ("nofile", 1024, 1024)),
    ("nproc=10:-1", ("nproc", 10, -1)),
    ("core=-1", ("core", -1, -1)),
])
def test_parse_ulimit(value: str, expected: tuple[str, int, int]) -> None:
    assert parse_ulimit(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("nofile", "expected NAME=SOFT[:HARD]"),
    ("files=1", "expected NAME=SOFT[:HARD]"),
    ("nofile=a:b", "limits are integers"),
    ("nofile=2048:1024", "the soft limit must not exceed the hard one"),
    ("nofile=-1:1024", "the soft limit must not exceed the hard one"),
    ("nofile=-2", "the soft limit must not exceed the hard one"),
])
def test_parse_ulimit_refuses(value: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_ulimit(value)


@pytest.mark.parametrize(("value", "expected"), [
    (None, 0), ("134217728", 134217728), ("128m", 128 << 20), ("1g", 1 << 30),
    ("64MiB", 64 << 20), ("512k", 512 << 10), ("2 GB", 2 << 30),
    ("1.5g", 3 << 29), ("0", 0), ("0.5k", 512),
])
def test_parse_shm_size(value: str | None, expected: int) -> None:
    assert parse_shm_size(value) == expected


@pytest.mark.parametrize("value", ["", "-1m", "1.5.1g", "12x", "99999999999999999999g"])
def test_parse_shm_size_refuses(value: str) -> None:
    with pytest.raises(UsageError, match="invalid --shm-size"):
        parse_shm_size(value)


def test_ulimit_and_shm_size_cross_the_wire(tmp_path: Path) -> None:
    options = gather_options(_args(["--ulimit", "nofile=1062:1062", "--ulimit", "nproc=99",
                                    "--shm-size", "128m", str(tmp_path)]), ENV)
    assert (options.ulimits, options.shm_size) == (
        (("nofile", 1062, 1062), ("nproc", 99, 99)), 128 << 20)
    assert BuildOptions.from_wire(options.to_wire()) == options
    earlier = {k: v for k, v in options.to_wire().items() if k not in ("ulimits", "shm_size")}
    assert (BuildOptions.from_wire(earlier).ulimits, BuildOptions.from_wire(earlier).shm_size
            ) == ((), 0)


def test_network_crosses_the_wire(tmp_path: Path) -> None:
    options = gather_options(_args(["--network", "host", str(tmp_path)]), ENV)
    assert options.network == "host"
    assert BuildOptions.from_wire(options.to_wire()) == options
    earlier = {k: v for k, v in options.to_wire().items() if k != "network"}
    assert BuildOptions.from_wire(earlier).network == "default"
    assert parse_network(None) == "default"
    with pytest.raises(UsageError, match="network mode 'bridge' not supported"):
        parse_network("bridge")


@pytest.mark.parametrize(("names", "chosen"), [
    (["dockerfile"], "dockerfile"),
    (["Dockerfile", "dockerfile"], "Dockerfile"),
    (["Dockerfile"], "Dockerfile"),
])
def test_default_dockerfile_falls_back_to_lowercase(tmp_path: Path, names: list[str],
                                                    chosen: str,
                                                    tmp_path_factory: pytest.TempPathFactory
                                                    ) -> None:
    """BuildKit's testDockerfileLowercase: with no ``-f``, a context holding only
    ``dockerfile`` builds it (its own ``.dockerignore`` too); ``Dockerfile`` wins when both
    exist.  ``build_request`` is what the embedded service and ``--endpoint`` both get."""
    for name in names:
        (tmp_path / name).write_text(f"FROM scratch\nLABEL from={name}\n")
    (tmp_path / "dockerfile.dockerignore").write_text("ignored.txt\n")
    env = {**ENV, "DOCKYARD_ROOT": str(tmp_path_factory.mktemp("root"))}  # its stat index
    options, request, _ = build_request(_args([str(tmp_path)]), env, io.BytesIO())
    assert options.filename == chosen
    assert request["dockerfile"] == f"FROM scratch\nLABEL from={chosen}\n".encode()
    patterns = ["ignored.txt"] if chosen == "dockerfile" else []
    assert request["session"]["ignore_patterns"] == patterns


@pytest.mark.parametrize(("flag", "environ", "expected"), [
    (None, {}, "auto"),
    (None, {"BUILDKIT_PROGRESS": "plain"}, "plain"),  # as buildx reads it
    (None, {"BUILDKIT_PROGRESS": ""}, "auto"),
    ("quiet", {"BUILDKIT_PROGRESS": "plain"}, "quiet"),  # the flag wins
])
def test_progress_from_the_flag_then_buildkit_progress(flag: str | None,
                                                       environ: dict[str, str],
                                                       expected: str) -> None:
    assert parse_progress(flag, environ) == expected


def test_a_bad_buildkit_progress_is_named() -> None:
    with pytest.raises(UsageError) as info:
        parse_progress(None, {"BUILDKIT_PROGRESS": "fancy"})
    assert str(info.value) == ("invalid BUILDKIT_PROGRESS 'fancy': unknown progress mode\n"
                               "hint: use one of auto, plain, tty, rawjson, quiet")

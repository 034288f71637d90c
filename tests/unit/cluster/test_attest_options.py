"""``--attest``, ``--provenance`` and ``--sbom`` as buildx reads them: each form -> the
attestations asked (disabled ones left out), each bad form -> its exact refusal, and the
specs' wire round trip (an earlier client's map, without them, reads as none)."""

from __future__ import annotations

import argparse

import pytest

from dockyard.cluster._build_options import AttestSpec, BuildOptions, gather_options, parse_attests
from dockyard.scheduler._errors import UsageError

PROVENANCE_MIN = AttestSpec("provenance", (("mode", "min"),))
SBOM = AttestSpec("sbom")

FORMS = [
    # (--attest values, --provenance, --sbom) -> specs
    (([], None, None), ()),
    (([], "false", None), ()),
    (([], "0", "false"), ()),
    (([], "true", None), (PROVENANCE_MIN,)),
    (([], "1", None), (PROVENANCE_MIN,)),
    (([], "mode=max", None), (AttestSpec("provenance", (("mode", "max"),)),)),
    (([], "mode=min,builder-id=https://ci.example/run/7,reproducible=1", None),
     (AttestSpec("provenance", (("builder-id", "https://ci.example/run/7"), ("mode", "min"),
                                ("reproducible", "true"))),)),
    (([], "version=v0.2", None), (PROVENANCE_MIN,)),
    (([], None, "true"), (SBOM,)),
    ((["type=provenance"], None, None), (PROVENANCE_MIN,)),
    ((["type=provenance,disabled=true"], None, None), ()),
    ((["type=sbom", "type=provenance,mode=max"], None, None),
     (SBOM, AttestSpec("provenance", (("mode", "max"),)))),
    ((["type=sbom,disabled=false"], "true", None), (SBOM, PROVENANCE_MIN)),
]


@pytest.mark.parametrize(("given", "expected"), FORMS)
def test_forms(given: tuple[list[str], str | None, str | None],
               expected: tuple[AttestSpec, ...]) -> None:
    assert parse_attests(*given) == expected


REFUSED = [
    (([], "max", None), "invalid --provenance 'max': invalid field 'max' must be a key=value "
                        "pair"),
    (([], "mode=full", None), "invalid --provenance 'mode=full': mode must be min or max, "
                              "not 'full'"),
    (([], "version=v1", None), "invalid --provenance 'version=v1': dockyard writes SLSA "
                               "provenance v0.2 only (BuildKit's default)"),
    (([], "filter=x", None), "invalid --provenance 'filter=x': unsupported provenance "
                             "attribute 'filter'"),
    (([], "disabled=perhaps", None), "invalid --provenance 'disabled=perhaps': disabled must "
                                     "be true or false, not 'perhaps'"),
    (([], None, "generator=docker/buildkit-syft-scanner"),
     "invalid --sbom 'generator=docker/buildkit-syft-scanner': generator images are not run "
     "by dockyard; its own scanner writes the SBOM"),
    (([], None, "scan-stage=true"), "invalid --sbom 'scan-stage=true': unsupported sbom "
                                    "attribute 'scan-stage'"),
    ((["mode=max"], None, None), "invalid --attest 'mode=max': attestation type not "
                                 "specified"),
    ((["type=vuln"], None, None), "invalid --attest 'type=vuln': unsupported attestation "
                                  "type 'vuln'"),
    ((["type=provenance"], "false", None), "invalid --provenance 'false': the provenance "
                                           "attestation is asked twice"),
]


@pytest.mark.parametrize(("given", "message"), REFUSED)
def test_refused(given: tuple[list[str], str | None, str | None], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_attests(*given)
    assert caught.value.message == message


def _args(tmp: str, **flags: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "context": tmp, "file": None, "platform": [], "target": None, "build_arg": [],
        "secret": [], "ssh": [], "output": [], "tag": [], "push": False, "no_cache": False,
        "progress": "plain", "metadata_file": None}
    return argparse.Namespace(**(base | flags))


def test_attestations_travel_in_the_options(tmp_path: object) -> None:
    options = gather_options(_args(str(tmp_path), attest=["type=sbom"], provenance="mode=max",
                                   sbom=None), {})
    assert options.attests == (SBOM, AttestSpec("provenance", (("mode", "max"),)))
    assert BuildOptions.from_wire(options.to_wire()) == options
    earlier = options.to_wire()
    del earlier["attests"]
    assert BuildOptions.from_wire(earlier).attests == ()


def test_disabled_attestations_leave_the_options_as_without_flags(tmp_path: object) -> None:
    plain = gather_options(_args(str(tmp_path)), {})
    off = gather_options(_args(str(tmp_path), provenance="false", sbom="false"), {})
    assert off == plain and off.to_wire() == plain.to_wire()

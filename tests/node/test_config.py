"""Config loading: the example file, error paths, environment overrides, `cxr-node config check`."""
from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from ingest_support import CXR_NODE, REPO

from dicomnode.config import ConfigError, config_from_dict, load_config

EXAMPLE = REPO / "config" / "node.example.yaml"


def test_example_config_is_valid_and_documents_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_FHIR_TOKEN", "x")  # the commented FHIR destination's bearer token
    config = load_config(EXAMPLE, environ={})
    assert config.node.ae_title == "CXRNODE"
    assert config.destinations[0].retry.max_attempts == 10
    text = EXAMPLE.read_text()
    # every key line of the example carries a comment
    key_lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    uncommented = [ln for ln in key_lines if "#" not in ln and not ln.rstrip().endswith(":")]
    assert uncommented == []
    # and every model field appears in it
    def keys(model: object, prefix: str = "") -> set[str]:
        out = set()
        for name, field in type(model).model_fields.items():  # type: ignore[attr-defined]
            out.add(field.alias or name)
        return out
    for section in ("node", "storage", "study", "processing", "model", "reasoning", "metrics", "logging", "output",
                    "feedback", "triage"):
        for key in keys(getattr(config, section)):
            assert f" {key}:" in text or f"\n{key}:" in text, f"{section}.{key} missing in the example"
    # destinations: the DIMSE one, and the commented-out DICOMweb, HL7 and FHIR ones, each valid once uncommented
    lines = text.splitlines()
    commented = []
    for start in (i for i, ln in enumerate(lines) if ln.startswith("  # - name:")):
        block = [lines[start], *itertools.takewhile(lambda ln: ln.startswith("  #   "), lines[start + 1:])]
        commented.append(config_from_dict({"processing": {"processor": "passthrough"},
                                           "destinations": yaml.safe_load("\n".join(
                                               ln.replace("  #", "  ", 1) for ln in block))},
                                          environ={}).destinations[0])
    assert (config.destinations[0].type, *(d.type for d in commented)) == ("dimse", "dicomweb", "hl7", "fhir")
    models = [config.destinations[0], *commented, *(d.auth for d in commented if hasattr(d, "auth"))]
    for model in models:
        for key in keys(model):
            assert f" {key}:" in text or f"{{{key}:" in text or f", {key}:" in text, \
                f"destinations ({model.__class__.__name__}).{key} missing in the example"


def test_defaults_and_sqlite_url(tmp_path: Path) -> None:
    config = config_from_dict({"storage": {"data_dir": str(tmp_path)}, "model": {"path": "m"}}, environ={})
    assert config.processing.processor == "reasoning"  # a configured model does the main job by default
    assert config.study.modalities == ["CR", "DX"]
    assert config.database_url == f"sqlite:///{tmp_path.resolve() / 'cxr-node.sqlite'}"
    assert config.storage.fsync is True


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"node": {"bogus": 1}}, "node.bogus: unknown key"),
        ({"node": {"port": 70000}}, "node.port:"),
        ({"node": {"ae_title": "A" * 17}}, "node.ae_title:"),
        ({"node": {"tls": {"enabled": True}}}, "node.tls:"),
        ({"destinations": [{"name": "p", "ae_title": "X", "host": "h", "port": 1, "objects": ["pdf"]}]},
         "destinations.0.objects: unknown result kind pdf (known: sr, sc)"),
        ({"destinations": [{"name": "p", "ae_title": "X", "host": "h", "port": 1, "retry": {"max_attempts": 0}}]},
         "destinations.0.retry.max_attempts:"),
        ({"study": {"quiet_seconds": 0}}, "study.quiet_seconds:"),
        ({"extra_section": {}}, "extra_section: unknown key"),
        ({"model": {"path": "m"}, "destinations": [{"name": "p", "ae_title": "X", "host": "h", "port": 1}] * 2},
         "destinations: names must be unique"),
    ],
)
def test_errors_name_the_key_path(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, environ={})
    assert any(line.startswith(expected) for line in info.value.problems), info.value.problems


def test_environment_overrides() -> None:
    env = {
        "CXR_NODE__STORAGE__DATABASE_URL": "postgresql+psycopg://u:secret@db/cxr",
        "CXR_NODE__NODE__PORT": "4000",
        "CXR_NODE__NODE__ALLOWED_CALLING_AETS": "[A, B]",
        "CXR_NODE__DESTINATIONS__0__PORT": "4243",
        "OTHER": "ignored",
    }
    data = {"destinations": [{"name": "pacs", "ae_title": "ORTHANC", "host": "h", "port": 4242}],
            "model": {"path": "m"}}
    config = config_from_dict(data, environ=env)
    assert config.database_url == "postgresql+psycopg://u:secret@db/cxr"
    assert config.node.port == 4000
    assert config.node.allowed_calling_aets == ["A", "B"]
    assert config.destinations[0].port == 4243
    with pytest.raises(ConfigError) as info:
        config_from_dict({}, environ={"CXR_NODE__NODE__NOPE": "1"})
    assert info.value.problems == ["node.nope: unknown key"]


def test_config_check_cli(tmp_path: Path) -> None:
    ok = subprocess.run([CXR_NODE, "config", "check", str(EXAMPLE)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    assert "study completion: quiet" in ok.stdout and "destination pacs: dimse ORTHANC@127.0.0.1:4242" in ok.stdout
    integration = tmp_path / "integration.yaml"
    integration.write_text(yaml.safe_dump({
        "processing": {"processor": "passthrough"}, "study": {"completion": "mpps"},
        "destinations": [
            {"name": "pacs", "ae_title": "PACS", "host": "h", "port": 104, "storage_commitment": True,
             "commitment_timeout_seconds": 90},
            {"name": "web", "type": "dicomweb", "url": "https://pacs.example/dicom-web",
             "auth": {"type": "bearer", "token_env": "CXR_TEST_TOKEN"}}]}))
    env = {**os.environ, "CXR_TEST_TOKEN": "t"}
    checked = subprocess.run([CXR_NODE, "config", "check", str(integration)], capture_output=True, text=True,
                             timeout=120, env=env)
    assert checked.returncode == 0, checked.stderr
    assert "study completion: mpps (MPPS only: no quiet timer)" in checked.stdout
    assert "destination pacs: dimse PACS@h:104, storage commitment (timeout 90 s)" in checked.stdout
    assert "destination web: dicomweb STOW-RS https://pacs.example/dicom-web, auth bearer, token from " \
           "$CXR_TEST_TOKEN" in checked.stdout
    env.pop("CXR_TEST_TOKEN")
    unset = subprocess.run([CXR_NODE, "config", "check", str(integration)], capture_output=True, text=True,
                           timeout=120, env=env)
    assert unset.returncode == 1 and "environment variable CXR_TEST_TOKEN is not set" in unset.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("node:\n  max_associations: 0\nstorage:\n  datadir: x\n")
    result = subprocess.run([CXR_NODE, "config", "check", str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "node.max_associations:" in result.stderr
    assert "storage.datadir: unknown key" in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("node: [unclosed\n")
    result = subprocess.run([CXR_NODE, "config", "check", str(broken)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "invalid YAML" in result.stderr


def test_priors_retrieve_modes() -> None:
    base = {"enabled": True, "query_aet": "PACS", "host": "127.0.0.1", "port": 104}
    assert config_from_dict({"model": {"path": "m"}, "reasoning": {"priors": base}}).reasoning.priors.retrieve == "get"
    with pytest.raises(ConfigError, match=r"reasoning\.priors: .*move needs move_aet and move_port"):
        config_from_dict({"model": {"path": "m"}, "reasoning": {"priors": {**base, "retrieve": "move"}}})
    moved_priors = {**base, "retrieve": "move", "move_aet": "CXRPRIOR", "move_port": 11113}
    moved = config_from_dict({"model": {"path": "m"}, "reasoning": {"priors": moved_priors}}).reasoning.priors
    assert (moved.move_aet, moved.move_port) == ("CXRPRIOR", 11113)
    with pytest.raises(ConfigError, match=r"reasoning\.priors\.retrieve"):
        config_from_dict({"model": {"path": "m"}, "reasoning": {"priors": {**base, "retrieve": "ftp"}}})


def test_reasoning_without_a_model_is_refused_naming_the_key() -> None:
    for data in ({}, {"processing": {"processor": "reasoning"}}):
        with pytest.raises(ConfigError) as info:
            config_from_dict(data, environ={})
        assert [line.split(":")[0] for line in info.value.problems] == ["model.path"]
    assert config_from_dict({"processing": {"processor": "passthrough"}}, environ={}).model.path is None
    # a serving engine holds the model: the openai backend needs its URL, not a local directory
    engine = config_from_dict({"model": {"backend": "openai", "url": "http://vllm:8000/v1"}}, environ={})
    assert engine.model.path is None and engine.processing.processor == "reasoning"
    with pytest.raises(ConfigError) as info:
        config_from_dict({"model": {"backend": "openai"}}, environ={})
    assert "model.url is required with model.backend: openai" in str(info.value)


@pytest.mark.parametrize(("priors", "missing"), [
    ({"enabled": True}, "host, port, query_aet missing"),
    ({"enabled": True, "host": "pacs", "query_aet": "PACS"}, "port missing"),
    ({"enabled": True, "host": "pacs", "port": 104}, "query_aet missing"),
])
def test_enabled_priors_need_host_port_and_ae(priors: dict, missing: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"model": {"path": "m"}, "reasoning": {"priors": priors}}, environ={})
    assert info.value.problems == [f"reasoning.priors: enabled priors need host, port and query_aet "
                                   f"(the PACS AE title): {missing}"]
    disabled = config_from_dict({"model": {"path": "m"}, "reasoning": {"priors": {**priors, "enabled": False}}},
                                environ={})
    assert disabled.reasoning.priors.enabled is False


def test_config_check_refuses_missing_model_and_half_priors(tmp_path: Path) -> None:
    no_model = tmp_path / "no-model.yaml"
    no_model.write_text("node:\n  port: 11112\n")
    result = subprocess.run([CXR_NODE, "config", "check", str(no_model)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "model.path: required when processing.processor is reasoning" in result.stderr
    priors = tmp_path / "priors.yaml"
    priors.write_text("model:\n  path: ./model\nreasoning:\n  priors: {enabled: true}\n")
    result = subprocess.run([CXR_NODE, "config", "check", str(priors)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "reasoning.priors: enabled priors need host, port and query_aet" in result.stderr

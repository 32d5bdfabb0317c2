"""deploy/: the systemd unit verifies, compose/Docker/Orthanc files parse and agree with each other and the config."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from dicomnode.config import config_from_dict
from dicomnode.peers.orthanc import OrthancServer

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _env_file(path: Path, include_commented: bool = False) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if include_commented and re.match(r"^#[A-Z_][A-Z0-9_]*=", line):
            line = line[1:]
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
    return values


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd" / "cxr-node.service").read_text()
    for needed in ("User=cxrnode", "EnvironmentFile=/etc/cxr-node/cxr-node.env", "NoNewPrivileges=yes",
                   "ProtectSystem=strict", "ReadWritePaths=/var/lib/cxr-node", "CapabilityBoundingSet=\n"):
        assert needed in unit
    cxr_node = Path(sys.executable).with_name("cxr-node")
    assert cxr_node.exists()
    # same unit, with the paths of this machine (verify checks that ExecStart and EnvironmentFile exist)
    local = unit.replace("/opt/cxr-node/venv/bin/cxr-node", str(cxr_node)).replace(
        "/etc/cxr-node/cxr-node.env", str(DEPLOY / "systemd" / "cxr-node.env"))
    path = tmp_path / "cxr-node.service"
    path.write_text(local)
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=120)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert not [line for line in output.splitlines() if "cxr-node.service" in line], output  # no ignored keys

    # a bad setting is reported: proves the check above can fail
    path.write_text(local.replace("ProtectSystem=strict", "ProtectSystem=bogus"))
    bad = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=120)
    assert "ProtectSystem" in bad.stdout + bad.stderr or "protect system" in (bad.stdout + bad.stderr).lower()


def test_env_file_defines_what_the_unit_uses_and_overrides_valid_keys() -> None:
    unit = (DEPLOY / "systemd" / "cxr-node.service").read_text()
    env = _env_file(DEPLOY / "systemd" / "cxr-node.env")
    for name in re.findall(r"\$\{(\w+)\}", unit):
        assert name in env, f"{name} used in the unit but not set in cxr-node.env"
    assert env["CXR_NODE_ROLE"] in ("all", "listener", "worker")
    overrides = {k: v for k, v in _env_file(DEPLOY / "systemd" / "cxr-node.env", True).items()
                 if k.startswith("CXR_NODE__")}
    assert overrides
    example = yaml.safe_load((ROOT / "config" / "node.example.yaml").read_text())
    config = config_from_dict(example, environ=overrides)  # unknown keys would raise ConfigError
    assert config.metrics.enabled


def test_compose_parses_and_agrees_with_node_and_orthanc_config() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"orthanc", "postgres", "vllm", "cxr-node", "cxr-worker"}
    node = services["cxr-node"]
    # the engine is the only service with the GPU; listener and workers run without one
    engine, worker = services["vllm"], services["cxr-worker"]
    devices = engine["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "deploy" not in node and "deploy" not in worker
    assert services["orthanc"]["image"].startswith("jodogne/orthanc-plugins")
    assert node["command"][-2:] == ["--role", "listener"] and worker["command"][-2:] == ["--role", "worker"]
    assert worker["image"] == node["image"] and worker["volumes"] == node["volumes"]
    assert worker["environment"] == node["environment"]
    assert worker["depends_on"]["vllm"]["condition"] == "service_healthy" and "healthcheck" in engine
    assert (DEPLOY / node["build"]["context"] / node["build"]["dockerfile"]).is_file()

    mounts = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{source} mounted but missing"
                mounts[target] = DEPLOY / source
    node_yaml = yaml.safe_load(mounts["/etc/cxr-node/node.yaml"].read_text())
    env = {k: v.replace("${CXR_DB_PASSWORD:?set CXR_DB_PASSWORD}", "pw") for k, v in node["environment"].items()}
    config = config_from_dict(node_yaml, environ=env)
    assert config.database_url.startswith("postgresql+psycopg://cxrnode:pw@postgres:5432/")
    # the workers talk to the engine service under the name it serves the mounted model as
    assert config.model.backend == "openai" and config.processing.workers > 1
    url = urlsplit(config.model.url)
    engine_args = engine["command"]
    assert (url.hostname, url.path) == ("vllm", "/v1") and str(url.port) in engine["expose"]
    assert engine_args[engine_args.index("--port") + 1] == str(url.port)
    assert engine_args[engine_args.index("--served-model-name") + 1] == config.model.name
    model_dir = engine_args[engine_args.index("--model") + 1]
    assert any(v.endswith(f":{model_dir}:ro") for v in engine["volumes"])
    limits = json.loads(engine_args[engine_args.index("--limit-mm-per-prompt") + 1])
    assert limits["video"] == 0 and limits["image"] >= 3  # current PA + lateral and a prior

    orthanc = json.loads(mounts["/etc/orthanc/orthanc.json"].read_text())
    target = services["orthanc"]["environment"]["CXR_NODE_MODALITY"]
    modality = orthanc["DicomModalities"][target]
    assert (modality["AET"], modality["Host"], modality["Port"]) == ("CXRNODE", "cxr-node", config.node.port)
    assert config.node.ae_title == services["orthanc"]["environment"]["CXR_NODE_AET"] == modality["AET"]
    assert modality["AllowGet"] and modality["AllowFind"] and modality["AllowStore"]
    (dest,) = config.destinations
    assert (dest.ae_title, dest.host, dest.port) == (orthanc["DicomAet"], "orthanc", orthanc["DicomPort"])
    priors = config.reasoning.priors
    assert (priors.query_aet, priors.host, priors.port) == (orthanc["DicomAet"], "orthanc", orthanc["DicomPort"])
    for script in orthanc["LuaScripts"]:
        assert script in mounts and mounts[script].suffix == ".lua"
    assert "CxrNodeForwarded" in orthanc["UserMetadata"]
    assert config.node.allowed_calling_aets == [orthanc["DicomAet"]]
    published = {p.split(":")[-1] for p in node["ports"]}
    assert {str(config.node.port), str(config.metrics.port)} <= published


def test_dockerfile_copies_existing_paths_and_runs_unprivileged() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    for sources in re.findall(r"^COPY\s+(.+?)\s+\S+$", text, flags=re.M):
        for source in sources.split():
            assert (ROOT / source).exists(), f"COPY {source}: missing"
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^VOLUME \["/var/lib/cxr-node"\]', text, flags=re.M)
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "torch==${TORCH_VERSION}" in code and "torchvision" not in code
    assert "HF_HUB_OFFLINE=1" in text


def test_example_orthanc_json_runs_on_real_orthanc(tmp_path: Path) -> None:
    example = json.loads((DEPLOY / "orthanc" / "orthanc.json").read_text())
    keep = {k: v for k, v in example.items() if not k.startswith("//") and k not in (
        "StorageDirectory", "IndexDirectory", "HttpPort", "DicomPort", "RemoteAccessAllowed", "Plugins",
        "AuthenticationEnabled", "RegisteredUsers")}
    keep["LuaScripts"] = [str(DEPLOY / "orthanc" / Path(p).name) for p in example["LuaScripts"]]
    with OrthancServer(tmp_path / "orthanc", extra_config=keep) as orthanc:
        modalities = orthanc.rest_get("/modalities?expand")
        assert modalities["CXRNODE"]["AllowGet"] is True and modalities["CXRNODE"]["Port"] == 11112
        log = orthanc.log_path.read_text()
    assert "Lua" in log and not re.search(r"^E.*(lua|Lua)", log, flags=re.M)


def test_dcm4chee_examples_parse() -> None:
    rule = json.loads((DEPLOY / "dcm4chee" / "cxrnode-export.json").read_text())["dcmArchiveDevice"]
    (exporter,) = rule["dcmExporter"]
    (export_rule,) = rule["dcmExportRule"]
    assert exporter["dcmURI"] == "dicom:CXRNODE" and export_rule["dcmExporterID"] == [exporter["dcmExporterID"]]
    assert "Modality=CR|DX" in export_rule["dcmProperty"]
    assert "SendingApplicationEntityTitle!=CXRNODE" in export_rule["dcmProperty"]
    # no loop: the Modality condition (a regular expression, matched whole) takes no derived object's modality,
    # whoever sent it (the node's SR and OT pages, a workstation's KO or PR)
    [modality_rule] = [p.split("=", 1)[1] for p in export_rule["dcmProperty"] if p.startswith("Modality=")]
    assert [m for m in ("SR", "OT", "KO", "PR", "DOC") if re.fullmatch(modality_rule, m)] == []
    assert re.fullmatch(modality_rule, "CR") and re.fullmatch(modality_rule, "DX")
    ldif = (DEPLOY / "dcm4chee" / "cxrnode-export.ldif").read_text()
    entries = [e for e in re.split(r"\n\s*\n", ldif) if re.search(r"^dn: ", e, flags=re.M)]
    classes = [re.search(r"^objectClass: (\S+)", e, flags=re.M).group(1) for e in entries]  # type: ignore[union-attr]
    assert {"dicomDevice", "dicomNetworkAE", "dcmExporter", "dcmExportRule"} <= set(classes)
    for prop in export_rule["dcmProperty"]:
        assert f"dcmProperty: {prop}" in ldif

"""Node configuration: YAML validated by pydantic, with environment overrides.

``load_config(path)`` reads YAML, applies ``CXR_NODE__SECTION__KEY=value`` environment variables (values are parsed
as YAML scalars, so ``true``/``5``/``[a, b]`` work) and validates. Errors are raised as :class:`ConfigError` whose
lines read ``path.to.key: reason``. Unknown keys are errors.
"""
from __future__ import annotations

import importlib
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    WrapValidator,
    field_validator,
    model_validator,
)

from dicomnode.config_types import (
    ConfigModel,
    HttpAuth,
    ResultKinds,
    RetryConfig,
    TLSConfig,
    ae_title,
    registered_kinds,
)
from dicomnode.datadir import DataDir
from dicomnode.destinations import DestinationConfig
from dicomnode.destinations.registry import validate_destination
from inference.record import Presence
from inference.triage import Priority, TriageRule

ENV_PREFIX = "CXR_NODE__"


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` holds ``path.to.key: reason`` lines."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class NodeSection(ConfigModel):
    ae_title: str = "CXRNODE"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)
    allowed_calling_aets: list[str] = Field(default_factory=list)
    max_associations: int = Field(10, ge=1)
    tls: TLSConfig = Field(default_factory=TLSConfig)
    min_free_disk_mb: int = Field(1024, ge=0)
    # A-ASSOCIATE-RQ with another called AE title than ae_title is rejected (called-AE-title-not-recognized)
    check_called_aet: bool = True
    # ARTIM: a connection must have sent its A-ASSOCIATE-RQ this long after the TCP connect (TLS included);
    # connections still negotiating never count against max_associations
    acse_timeout_seconds: float = Field(30, gt=0)
    tls_handshake_timeout_seconds: float = Field(10, gt=0)
    # an established association with no complete PDU for this long is aborted; also bounds every recv/send
    network_timeout_seconds: float = Field(60, gt=0)
    dimse_timeout_seconds: float = Field(60, gt=0)
    # SIGTERM: in-flight associations get this long to finish, then they are aborted
    shutdown_timeout_seconds: float = Field(30, ge=0)

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str) -> str:
        return ae_title(value)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _check_aets(cls, values: list[str]) -> list[str]:
        return [ae_title(v) for v in values]


SUPPORTED_DATABASES = ("sqlite", "postgresql")


def check_database_url(url: str) -> str:
    """``url`` when SQLAlchemy parses it, names a supported database and its driver is installed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ValueError(f"not a database URL ({exc})") from None
    if parsed.get_backend_name() not in SUPPORTED_DATABASES:
        raise ValueError(f"database {parsed.get_backend_name()!r} is not supported (use one of "
                         f"{', '.join(SUPPORTED_DATABASES)})")
    try:
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise ValueError(f"unknown database driver {parsed.drivername!r}") from None
    except ImportError as exc:
        raise ValueError(f"database driver {parsed.drivername!r} is not installed ({exc.name})") from None
    if parsed.get_backend_name() == "postgresql" and not parsed.database:
        raise ValueError("PostgreSQL URL names no database")
    return url


class StorageSection(ConfigModel):
    data_dir: Path = Path("./var")
    database_url: str | None = None
    retention_days: float = Field(7, ge=0)
    fsync: bool = True

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return check_database_url(value) if value else value


class StudySection(ConfigModel):
    quiet_seconds: float = Field(10, gt=0)
    # what completes a study: quiet (quiet_seconds of silence), mpps (only a COMPLETED/DISCONTINUED Modality
    # Performed Procedure Step sent to the node; no timer), mpps_or_quiet (whichever comes first)
    completion: Literal["quiet", "mpps", "mpps_or_quiet"] = "quiet"
    modalities: list[str] = Field(default_factory=lambda: ["CR", "DX"])
    body_parts: list[str] = Field(default_factory=lambda: ["CHEST", "THORAX", ""])

    @field_validator("modalities", "body_parts")
    @classmethod
    def _upper(cls, values: list[str]) -> list[str]:
        return [v.strip().upper() for v in values]


# one entry of ``destinations``: validated by the config class its ``type`` names (dicomnode.destinations)
AnyDestination = Annotated[SerializeAsAny[DestinationConfig], WrapValidator(validate_destination)]
Destination = DestinationConfig  # the base of every destination type's config class
DicomwebAuth = HttpAuth
__all__ = ["AnyDestination", "ConfigError", "Destination", "DestinationConfig", "DicomwebAuth", "HttpAuth",
           "NodeConfig", "RetryConfig", "TLSConfig", "config_from_dict", "load_config"]

PASSTHROUGH = "passthrough"  # the processor that produces nothing: only ever explicit, warned about at start-up
REASONING = "reasoning"


class ProcessingSection(ConfigModel):
    processor: str = REASONING
    workers: int = Field(1, ge=1)
    poll_seconds: float = Field(1.0, gt=0)


class ModelSection(ConfigModel):
    backend: Literal["transformers", "openai"] = "transformers"
    path: Path | None = None
    quantization: Literal["nf4", "fp4", "int8", "none"] = "nf4"
    device: str = "auto"
    skip_modules: list[str] | None = None
    # torch threads of the in-process model; None = the usable cores less what the role runs beside it, or
    # OMP_NUM_THREADS when the environment sets it (dicomnode/threads.py)
    threads: int | None = Field(None, ge=1, le=1024)
    # backend "openai": an OpenAI-compatible engine (vLLM); the key is read from the named environment variable
    url: str | None = None  # e.g. http://vllm:8000/v1
    name: str | None = None  # served model id; null = the first one /v1/models lists
    api_key_env: str | None = None
    timeout_seconds: float = Field(120.0, gt=0)
    profile: str = "qwen2_5_vl"  # model profile of the served model (box convention, system prompt, images)
    min_pixels: int = Field(56 * 56, ge=1)  # images are resized here to the model's grid within these bounds;
    max_pixels: int = Field(448 * 448, ge=1)  # keep max_pixels <= the served processor's max_pixels

    @model_validator(mode="after")
    def _backend_keys(self) -> ModelSection:
        if self.backend == "openai" and not self.url:
            raise ValueError("model.url is required with model.backend: openai")
        return self


class PriorsConfig(ConfigModel):
    enabled: bool = False
    query_aet: str | None = None
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    calling_aet: str | None = None
    retrieve: Literal["get", "move"] = "get"
    move_aet: str | None = None
    move_port: int | None = Field(None, ge=1, le=65535)
    timeout_seconds: float = Field(30, gt=0)
    modalities: list[str] = Field(default_factory=lambda: ["CR", "DX"])

    @model_validator(mode="after")
    def _enabled_needs_a_pacs(self) -> PriorsConfig:
        missing = [key for key in ("host", "port", "query_aet") if self.enabled and not getattr(self, key)]
        if missing:
            raise ValueError(f"enabled priors need host, port and query_aet (the PACS AE title): "
                             f"{', '.join(missing)} missing")
        return self

    @model_validator(mode="after")
    def _move_needs_its_own_ae(self) -> PriorsConfig:
        if self.enabled and self.retrieve == "move" and not (self.move_aet and self.move_port):
            raise ValueError("retrieve: move needs move_aet and move_port (a receiving AE of its own)")
        return self


class ReasoningSection(ConfigModel):
    stages_file: Path | None = None
    max_new_tokens: int = Field(256, ge=1)
    seed: int = 0
    priors: PriorsConfig = Field(default_factory=PriorsConfig)
    constrain_closed_answers: bool = True  # yes/no, choices and boxes decoded under their grammar
    parallel_within_stage: bool = False  # independent questions of a stage asked together (blind to each other)


class TriageRuleConfig(ConfigModel):
    """One triage rule: ``finding`` (a checklist key of the stage book) answered ``when`` raises ``priority``."""

    finding: str = Field(min_length=1)
    priority: Literal["urgent", "stat"]
    when: Literal["present", "uncertain"] = "present"

    def rule(self) -> TriageRule:
        return TriageRule(self.finding, Priority(self.priority), Presence(self.when))


class TriageSection(ConfigModel):
    """Which findings put a study on top of the worklist (``inference.triage``); none: no triage."""

    rules: list[TriageRuleConfig] = Field(default_factory=list)

    def as_rules(self) -> tuple[TriageRule, ...]:
        return tuple(r.rule() for r in self.rules)


class FindingOperatingPoint(ConfigModel):
    """A site's operating point for one checklist finding (``findings:``; inference.operating_points)."""

    # present when the model's probability of presence is at least this; absent below
    threshold: float = Field(ge=0.0, le=1.0)


def _finding_labels(stages_file: Path | None) -> dict[str, str] | None:
    """Checklist finding key -> label of the stage book the node will use; None when it cannot be read (the
    reasoning processor reports that at start-up)."""
    from inference.stages import StageConfigError, load_stages

    try:
        return {f.key: f.label for f in load_stages(stages_file).findings}
    except (StageConfigError, OSError):
        return None


class MetricsSection(ConfigModel):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class DashboardAuth(ConfigModel):
    """``token``: the secret is read from the environment variable ``token_env`` (a login form and an
    ``Authorization: Bearer`` header both take it); ``basic``: ``users_file`` holds ``name:hash`` lines
    (``cxr-node dashboard hash-password``), taken by the login form and ``Authorization: Basic``."""

    type: Literal["token", "basic"]
    token_env: str | None = None
    users_file: Path | None = None

    @model_validator(mode="after")
    def _needs_its_secret(self) -> DashboardAuth:
        if self.type == "token" and not self.token_env:
            raise ValueError("type token needs token_env (the environment variable holding the token)")
        if self.type == "basic" and self.users_file is None:
            raise ValueError("type basic needs users_file")
        return self


class DashboardSection(ConfigModel):
    """The admin web dashboard (dicomnode/dashboard), served by the node process (role all or dashboard)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    auth: DashboardAuth | None = None
    session_minutes: float = Field(480, gt=0)

    @model_validator(mode="after")
    def _auth_off_loopback(self) -> DashboardSection:
        if self.auth is None and self.host not in LOOPBACK_HOSTS:
            raise ValueError(f"auth: required when host is {self.host} (not loopback): anyone on the network "
                             f"could read and change the node")
        return self


HL7_FIELD = r"^(OBR|ORC)-[1-9][0-9]?$"  # where an accession number may be read


class FeedbackSection(ConfigModel):
    """The radiologist's final report back to the node: HL7 v2 ``ORU^R01`` over MLLP (dicomnode/feedback), served by
    the roles that run the DICOM listener. Off unless enabled."""

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = Field(2575, ge=0, le=65535)
    tls: TLSConfig = Field(default_factory=TLSConfig)
    # empty = any; otherwise MSH-3 (sending application, its first component) / MSH-4 must be listed
    allowed_sending_applications: list[str] = Field(default_factory=list)
    allowed_sending_facilities: list[str] = Field(default_factory=list)
    # empty = any; otherwise the peer's address must be in one of these (an address or a network, 10.1.2.0/24)
    allowed_hosts: list[str] = Field(default_factory=list)
    application: str = "CXRNODE"  # MSH-3 of our ACKs
    facility: str = ""  # MSH-4 of our ACKs
    # where the accession number is read, the first non-empty field wins
    accession_fields: list[str] = Field(default_factory=lambda: ["OBR-3", "OBR-2", "OBR-18", "ORC-3"])
    # OBR-25 result statuses whose verdicts count (F final, C corrected); other reports are stored, not compared
    final_statuses: list[str] = Field(default_factory=lambda: ["F", "C"])
    terms_file: Path | None = None  # finding synonyms and negation/uncertainty cues; null = the packaged file
    max_connections: int = Field(10, ge=1)
    max_message_bytes: int = Field(1024 * 1024, ge=1024)
    idle_timeout_seconds: float = Field(300, gt=0)
    tls_handshake_timeout_seconds: float = Field(10, gt=0)
    match_seconds: float = Field(30, gt=0)  # how often unmatched reports are matched again (and new results compared)

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or network") from None
        return values

    @field_validator("accession_fields")
    @classmethod
    def _check_fields(cls, values: list[str]) -> list[str]:
        values = [v.strip().upper() for v in values]
        bad = [v for v in values if not re.match(HL7_FIELD, v)]
        if bad or not values:
            raise ValueError(f"fields are OBR-N or ORC-N (got {bad or 'none'})")
        return values

    @field_validator("final_statuses")
    @classmethod
    def _upper_statuses(cls, values: list[str]) -> list[str]:
        return [v.strip().upper() for v in values]

    @model_validator(mode="after")
    def _terms_readable(self) -> FeedbackSection:
        if self.enabled and self.terms_file is not None:
            from dicomnode.feedback.terms import load_terms

            load_terms(self.terms_file)  # TermsError (a ValueError) names the file and the key
        return self


class LoggingSection(ConfigModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_: bool = Field(True, alias="json")
    file: Path | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("file")
    @classmethod
    def _directory_exists(cls, value: Path | None) -> Path | None:
        if value is not None:
            if value.is_dir():
                raise ValueError(f"{value} is a directory, not a file")
            if not value.absolute().parent.is_dir():
                raise ValueError(f"directory {value.absolute().parent} does not exist")
        return value


class OutputSection(ConfigModel):
    series_number_sr: int = 9901
    series_number_sc: int = 9902
    series_description_prefix: str = "AI CXR reasoning"
    # SC reasoning pages: "rle" (RLE Lossless, ~10x smaller) or "explicit" (uncompressed). A destination that does
    # not accept RLE gets the page decompressed, so "rle" is safe with any PACS.
    page_encoding: Literal["rle", "explicit"] = "rle"
    # Render and encode the SC pages in this many helper processes while the worker builds the SR (each ~150 MB;
    # 0 = in the worker, one step after the other).
    page_processes: int = Field(default=2, ge=0, le=8)
    # SR SOP class: "comprehensive3d" (Comprehensive 3D SR, what OHIF reads) or "comprehensive" (Comprehensive SR,
    # for Orthanc Stone's viewer and PACS that do not know 3D SR).
    sr_sop_class: Literal["comprehensive3d", "comprehensive"] = "comprehensive3d"
    # the result kinds the node makes (sr_writer.kinds: "sr" the Structured Report, "sc" the reasoning pages)
    objects: ResultKinds = Field(default_factory=registered_kinds)

    @field_validator("objects")
    @classmethod
    def _some_kind(cls, values: list[str]) -> list[str]:
        if not values:
            raise ValueError("at least one result kind (to make none, use processing.processor: passthrough)")
        return values


class NodeConfig(ConfigModel):
    # modules imported before the rest is read: they register destination types, result kinds or processors
    plugins: list[str] = Field(default_factory=list)
    node: NodeSection = Field(default_factory=NodeSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    study: StudySection = Field(default_factory=StudySection)
    destinations: list[AnyDestination] = Field(default_factory=list)
    processing: ProcessingSection = Field(default_factory=ProcessingSection)
    model: ModelSection = Field(default_factory=ModelSection)
    reasoning: ReasoningSection = Field(default_factory=ReasoningSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    dashboard: DashboardSection = Field(default_factory=DashboardSection)
    feedback: FeedbackSection = Field(default_factory=FeedbackSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    output: OutputSection = Field(default_factory=OutputSection)
    triage: TriageSection = Field(default_factory=TriageSection)
    # finding key -> operating point; findings not named follow the model's own answer
    findings: dict[str, FindingOperatingPoint] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_findings(self) -> NodeConfig:
        known = _finding_labels(self.reasoning.stages_file) if self.findings else None
        unknown = [key for key in self.findings if known is not None and key not in known]
        if unknown:
            raise ValueError(f"findings: {', '.join(unknown)} not in the stage book's checklist (known: "
                             f"{', '.join(known or {})})")
        return self

    @property
    def thresholds(self) -> dict[str, float]:
        """Finding key -> threshold of every configured operating point (``inference.flow.run_flow``)."""
        return {key: point.threshold for key, point in self.findings.items()}

    @model_validator(mode="after")
    def _reasoning_needs_a_model(self) -> NodeConfig:
        if self.processing.processor == REASONING and self.model.backend == "transformers" and self.model.path is None:
            raise ValueError("model.path: required when processing.processor is reasoning (the default): set the "
                             "local model directory, or processing.processor: passthrough to produce no results")
        return self

    @model_validator(mode="after")
    def _unique_destinations(self) -> NodeConfig:
        names = [d.name for d in self.destinations]
        if len(names) != len(set(names)):
            raise ValueError("destinations: names must be unique")
        return self

    @model_validator(mode="after")
    def _destinations_take_what_is_made(self) -> NodeConfig:
        made = set(self.output.objects)
        for index, destination in enumerate(self.destinations):
            missing = [kind for kind in getattr(destination, "objects", []) if kind not in made]
            if missing:
                raise ValueError(f"destinations.{index}.objects: {', '.join(missing)} not made (output.objects is "
                                 f"{', '.join(self.output.objects)})")
            needed = [kind for kind in getattr(destination, "built_from", ()) if kind not in made]
            if needed:
                raise ValueError(f"destinations.{index}: a {destination.type} message is built from the "
                                 f"{', '.join(needed)}, which output.objects does not make")
        return self

    @model_validator(mode="after")
    def _triage_rules_can_fire(self) -> NodeConfig:
        """A rule for a finding the checklist does not ask about could never fire: an error, not a silent no-op."""
        if not self.triage.rules:
            return self
        from inference.stages import StageConfigError, load_stages
        from inference.triage import asked_findings, rule_problems

        try:
            book = load_stages(self.reasoning.stages_file)
        except StageConfigError as exc:
            raise ValueError(f"triage.rules: cannot be checked against the stage book: {exc}") from None
        problems = rule_problems(self.triage.as_rules(), asked_findings(book))
        if problems:
            raise ValueError("; ".join(f"triage.rules.{index}.finding: {text}" for index, text in problems))
        return self

    @property
    def database_url(self) -> str:
        """The effective SQLAlchemy URL (SQLite file in data_dir when unset)."""
        if self.storage.database_url:
            return self.storage.database_url
        return f"sqlite:///{DataDir(self.storage.data_dir).sqlite}"


def _format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        if err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            if loc == "(root)":  # cross-section checks name their key themselves
                lines.append(msg)
                continue
        lines.append(f"{loc}: {msg}")
    return lines


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Return ``data`` with ``CXR_NODE__A__B=value`` overrides set at ``a.b`` (keys lower-cased)."""
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__") if k]
        if not keys:
            continue
        node: Any = data
        for key in keys[:-1]:
            if isinstance(node, list):
                node = node[int(key)]
                continue
            node = node.setdefault(key, {})
        value = yaml.safe_load(raw) if raw != "" else ""
        if isinstance(node, list):
            node[int(keys[-1])] = value
        else:
            node[keys[-1]] = value
    return data


def import_plugins(names: Any) -> None:
    """Import the ``plugins`` modules (ConfigError naming the one that fails)."""
    if not isinstance(names, list):
        return  # validation names the problem
    for name in names:
        try:
            importlib.import_module(str(name))
        except Exception as exc:
            raise ConfigError([f"plugins: cannot import {name!r}: {type(exc).__name__}: {exc}"]) from None


def config_from_dict(data: dict[str, Any] | None, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Validate a config mapping (after environment overrides; ``plugins`` imported first)."""
    data = apply_env(dict(data or {}), os.environ if environ is None else environ)
    import_plugins(data.get("plugins", []))
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Read, override from the environment and validate a YAML config file.

    Relative ``storage.data_dir`` and TLS/model paths stay relative to the current directory.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"(file): cannot read {path}: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"(file): invalid YAML: {exc}"]) from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(["(root): top level must be a mapping"])
    return config_from_dict(data, environ)

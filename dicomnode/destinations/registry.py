"""The registry of destination types: ``@handler_for(ConfigClass)`` on a :class:`Sender` subclass registers the
type named by the config class's ``type`` literal. ``NodeConfig.destinations`` validates each entry with the config
class its ``type`` names (``dimse`` when absent), so a type registered here is accepted by the config at once."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidatorFunctionWrapHandler

from dicomnode.destinations.base import DestinationConfig, NodeIdentity, Sender

DEFAULT_TYPE = "dimse"


@dataclass(frozen=True)
class DestinationType:
    name: str
    config_class: type[DestinationConfig]
    sender_class: type[Sender[Any]]


_TYPES: dict[str, DestinationType] = {}
S = TypeVar("S", bound=type[Sender[Any]])


def type_name(config_class: type[DestinationConfig]) -> str:
    """The ``type`` a config class answers to (the default of its ``type`` field)."""
    default = config_class.model_fields["type"].default
    if not isinstance(default, str) or not default:
        raise TypeError(f"{config_class.__name__}.type needs a literal default naming the type")
    return default


def handler_for(config_class: type[DestinationConfig]) -> Callable[[S], S]:
    """Class decorator: the decorated Sender sends to destinations of ``config_class``'s type."""
    def register(sender_class: S) -> S:
        name = type_name(config_class)
        known = _TYPES.get(name)
        if known is not None and (known.config_class, known.sender_class) != (config_class, sender_class):
            raise ValueError(f"destination type {name!r} is registered already ({known.sender_class.__name__})")
        sender_class.config_class = config_class
        _TYPES[name] = DestinationType(name, config_class, sender_class)
        return sender_class
    return register


def unregister(name: str) -> None:
    """Forget a type (tests that register their own)."""
    _TYPES.pop(name, None)


def type_names() -> list[str]:
    return list(_TYPES)


def destination_type(name: str) -> DestinationType:
    try:
        return _TYPES[name]
    except KeyError:
        raise ValueError(f"unknown destination type {name!r} (known: {', '.join(type_names())})") from None


def make_sender(destination: DestinationConfig, node: NodeIdentity) -> Sender[Any]:
    """The sender of ``destination``."""
    return destination_type(destination.type).sender_class(destination, node)


def validate_destination(value: Any, handler: ValidatorFunctionWrapHandler) -> DestinationConfig:
    """Pydantic wrap validator of one ``destinations`` entry: validated by the config class of its ``type``."""
    if isinstance(value, DestinationConfig):
        return value
    if not isinstance(value, dict):
        raise ValueError("a destination is a mapping (name, type and the type's keys)")
    kind = str(value.get("type", DEFAULT_TYPE))
    config_class = destination_type(kind).config_class
    foreign = sorted(key for key in value if key not in config_class.model_fields)
    if foreign:
        owners = {key: [t.name for t in _TYPES.values() if key in t.config_class.model_fields] for key in foreign}
        raise ValueError("; ".join(f"{key} is not a key of a {kind} destination"
                                   + (f" (it is one of {', '.join(owners[key])})" if owners[key] else "")
                                   for key in foreign))
    return config_class.model_validate({**value, "type": kind})

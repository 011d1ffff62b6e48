"""The configuration flags of `triplet-tfx run`, `compile` and `deploy`, derived from the one
declaration of each option: its field's metadata in components/config.py (see `option` there).

Each flag's default is its field's value in the chosen profile's configuration, so a profile sets
the defaults of its fields' flags whatever their names; the flags given on the command line win.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any, Callable, Dict, Iterator, Mapping

from triplet_tfx.components.config import FLAG_GROUPS, PROFILES, SECTIONS, ConfigError, PipelineConfig, profile_config

# The sections in the order their flags are added (PipelineConfig's own fields, "", after `beam`: their
# --beam-arg ends the beam group); `kubeflow` only for `compile` and `deploy`.
SECTION_ORDER = ("data", "train", "eval", "serving", "beam", "", "kubeflow")
_TYPES: Dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}


@dataclasses.dataclass(frozen=True)
class Flag:
    """One command-line flag of a configuration field (its declaration: `spec`, the field's metadata or
    one of its `more` entries)."""

    section: str  # a key of SECTIONS ("": PipelineConfig's own fields)
    field: str
    spec: Mapping[str, Any]
    annotation: Any  # the field's type

    @property
    def flag(self) -> str:
        return self.spec["flag"]

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    @property
    def group(self) -> str:
        return self.spec.get("group", self.section or "pipeline")

    @property
    def switch(self) -> bool:
        return self.annotation is bool and "type" not in self.spec

    def default(self, config: PipelineConfig) -> Any:
        """The flag's default: from the field's value in `config` (a profile's configuration)."""
        section = getattr(config, self.section) if self.section else config
        if "from_config" in self.spec:
            return self.spec["from_config"](section)
        value = getattr(section, self.field)
        return list(value) if self.spec.get("repeat") else value

    def to_config(self, value: Any, values: Dict[str, Any]) -> Dict[str, Any]:
        """The field values that the flag's (parsed) value sets; `values`: the section's so far."""
        if "to_config" in self.spec:
            return self.spec["to_config"](value, values)
        return {self.field: tuple(value) if self.spec.get("repeat") else value}

    def argparse_kwargs(self, config: PipelineConfig) -> Dict[str, Any]:
        kwargs: Dict[str, Any] = {"dest": self.dest, "default": self.default(config), "help": self.spec["help"]}
        if self.switch:
            return {**kwargs, "action": "store_true"}
        if self.spec.get("repeat"):
            kwargs["action"] = "append"
        elif "type" in self.spec:
            kwargs["type"] = self.spec["type"]
        else:
            base = _non_optional(self.annotation)
            if base not in _TYPES.values():
                raise TypeError(f"{self.section}.{self.field}: declare the `type` of {self.flag}")
            kwargs["type"] = base
        for key in ("metavar", "choices"):
            if key in self.spec:
                kwargs[key] = self.spec[key]
        if "renamed" in self.spec:
            kwargs["type"] = _renamed_value(self.flag, self.spec["renamed"], kwargs["type"])
        return kwargs


def _renamed_value(flag: str, renamed: Mapping[str, str], parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A flag's value parser that takes a renamed choice's old spelling, with a deprecation warning."""

    def parse_value(text: str) -> Any:
        if text in renamed:
            print(
                f"triplet-tfx: warning: {flag} {text} is deprecated: it is now called {renamed[text]}; the old "
                "name will be removed in the next release",
                file=sys.stderr,
            )
            return renamed[text]
        return parse(text)

    return parse_value


def _non_optional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 else annotation


def config_flags(sections=SECTION_ORDER) -> Iterator[Flag]:
    """Every flag declared on the fields of these sections, in --help order."""
    for section in sections:
        cls = SECTIONS[section]
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if "help" not in field.metadata:  # no flag, or set by a flag declared on another field
                continue
            yield Flag(section, field.name, field.metadata, hints[field.name])
            for more in field.metadata.get("more", ()):
                yield Flag(section, field.name, more, hints[field.name])


def _sections(kubeflow: bool) -> tuple:
    return SECTION_ORDER if kubeflow else tuple(s for s in SECTION_ORDER if s != "kubeflow")


def profile_flag_defaults(profile: str, kubeflow: bool = True) -> Dict[str, Any]:
    """The argparse defaults that a profile sets: {dest: default} of every configuration flag."""
    config = profile_config(profile)
    return {flag.dest: flag.default(config) for flag in config_flags(_sections(kubeflow))}


def _profile_help() -> str:
    described = {"tutorial": "the TFA tutorial's settings"}
    for name, sections in PROFILES.items():
        if name not in described:
            described[name] = ", ".join(
                f"{field}={value}" for section in sections.values() for field, value in section.items()
            ).replace("%", "%%")
    return (
        "named defaults: "
        + " or ".join(f"{name} ({text})" for name, text in described.items())
        + "; other flags override it. Default: %(default)s"
    )


def add_config_flags(
    parser: argparse.ArgumentParser, profile: str = "tutorial", kubeflow: bool = False
) -> Dict[str, Any]:
    """Adds --profile and the configuration flags (with `kubeflow`: the kubeflow section's too), their
    defaults from `profile`; returns the argument groups by their FLAG_GROUPS key."""
    config = profile_config(profile)
    parser.add_argument("--profile", choices=sorted(PROFILES), default=profile, help=_profile_help())
    flags = list(config_flags(_sections(kubeflow)))
    used = {flag.group for flag in flags}
    groups = {
        key: parser.add_argument_group(title, description)
        for key, (title, description) in FLAG_GROUPS.items()
        if key in used
    }
    for flag in flags:
        groups[flag.group].add_argument(flag.flag, *flag.spec.get("aliases", ()), **flag.argparse_kwargs(config))
    # Deprecated, not configuration: accepted with a warning (config_from_args).
    groups["data"].add_argument(
        "--convert-channels",
        choices=("luminance",),
        default=None,
        help="deprecated, no effect: every image is converted to --image-size's channels "
        "by one rule (docs/data.md); accepted with a warning until the next release",
    )
    return groups


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The validated PipelineConfig of parsed flags: the profile's configuration, then the value of
    every configuration flag the parser has (fields without a flag keep the profile's values)."""
    if getattr(args, "convert_channels", None):
        print(
            "triplet-tfx: warning: --convert-channels is deprecated and has no effect: every image is "
            "converted to --image-size's channels by one rule (docs/data.md); it will be removed in the next "
            "release",
            file=sys.stderr,
        )
    base = profile_config(getattr(args, "profile", "tutorial"))
    values: Dict[str, Dict[str, Any]] = {section: {} for section in SECTION_ORDER}
    for flag in config_flags():
        if hasattr(args, flag.dest):
            values[flag.section].update(flag.to_config(getattr(args, flag.dest), values[flag.section]))
    sections = {
        section: dataclasses.replace(getattr(base, section), **values[section]) for section in SECTION_ORDER if section
    }
    return dataclasses.replace(base, **values[""], **sections).validate()


__all__ = ["ConfigError", "Flag", "add_config_flags", "config_flags", "config_from_args", "profile_flag_defaults"]

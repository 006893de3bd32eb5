"""The command line, checked before Hydra composes: unknown config-group choices and unknown keys.

Hydra answers both with several lines of its own (or, for an unknown ``experiment=``, an optional
group, not at all); here each is one line on stderr and exit status 2, naming what to type instead.
Only Hydra's public API is used (``hydra.compose``, the override parser of ``hydra.core``).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig

from ikl.cli.paths import CONFIGS
from ikl.errors import ConfigError


def hydra_args_parser() -> argparse.ArgumentParser:
    """The flags of a Hydra application (as ``hydra.main`` documents them); the rest are overrides."""
    parser = argparse.ArgumentParser(add_help=False)
    for flags in (("--help", "-h"), ("--hydra-help",), ("--resolve",), ("--run", "-r"), ("--multirun", "-m")):
        parser.add_argument(*flags, action="store_true")
    parser.add_argument("--shell-completion", "-sc", action="store_true")
    parser.add_argument("--version", action="store_true")
    parser.add_argument("--cfg", "-c", choices=["job", "hydra", "all"])
    for flags in (
        ("--package", "-p"),
        ("--config-path", "-cp"),
        ("--config-name", "-cn"),
        ("--config-dir", "-cd"),
        ("--experimental-rerun",),
    ):
        parser.add_argument(*flags)
    parser.add_argument("--info", "-i", nargs="?", const="all")
    parser.add_argument("overrides", nargs="*")
    return parser


def command_line_overrides(argv: list[str]) -> list[str]:
    """The overrides in ``argv``; none when a flag changes the config search or asks for help."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = hydra_args_parser().parse_args(argv)
    except SystemExit:  # a usage error: Hydra answers it itself
        return []
    if args.config_path or args.config_dir or args.config_name or args.experimental_rerun:
        return []
    if args.help or args.hydra_help or args.shell_completion or args.version:
        return []
    return list(args.overrides)


def check_command_line(config_name: str, argv: list[str] | None = None, config_dir: Path = CONFIGS) -> None:
    """Unknown group choices and unknown keys on the command line: one line on stderr, exit 2."""
    overrides = command_line_overrides(sys.argv[1:] if argv is None else argv)
    try:
        check_overrides(overrides, config_dir)
        check_keys(config_name, overrides, config_dir)
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)


def parse(overrides: list[str]) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException:  # Hydra's grammar rejects it: Hydra reports it
        return []


def check_overrides(overrides: list[str], config_dir: Path = CONFIGS) -> None:
    """Raise a one-line ``ConfigError`` for a config-group choice that has no config under ``config_dir``.

    Groups are the folders of ``config_dir`` (as for Hydra). Checks ``group=``, ``+group=``, ``++group=``,
    ``group@package=``, nested groups, experiment names with slashes, ``name.yaml``, sweeps
    (``loss=ikl,kd``, ``choice(...)``) and lists. Leaves to Hydra: deletions (``~group``), value overrides
    (``trainer.epochs=3``), ``hydra/...`` groups, glob/range sweeps and anything its grammar rejects.
    """
    parsed = parse(overrides)
    if any(o.key_or_group.startswith("hydra.searchpath") for o in parsed):
        return  # configs may come from other folders too
    for override in parsed:
        _check_group_override(override, config_dir)


def _is_group(override: Override, config_dir: Path) -> bool:
    top = override.key_or_group.split("/")[0]
    return top != "hydra" and "." not in override.key_or_group and (config_dir / top).is_dir()


def _check_group_override(override: Override, config_dir: Path) -> None:
    group = override.key_or_group
    if override.is_delete() or not _is_group(override, config_dir):
        return
    if not (config_dir / group).is_dir():
        groups = sorted(p.name for p in config_dir.iterdir() if p.is_dir() and p.name != "hydra")
        raise ConfigError(
            f"{override.input_line}: there is no config group '{group}' (no folder {config_dir.name}/{group}); "
            f"the groups are: {', '.join(groups)}"
        )
    for name in _chosen_configs(override):
        file = name if name.endswith(".yaml") else f"{name}.yaml"
        if not (config_dir / f"{group}/{file}").is_file():  # joined as Hydra does: never an absolute path
            raise ConfigError(
                f"{override.input_line}: Could not find '{group}/{name}' (no {config_dir.name}/{group}/{file}); "
                f"{_alternatives(config_dir, group, name)}"
            )


def _chosen_configs(override: Override) -> list[str]:
    """The config names a group override selects: one, each of a list, or each of a choice sweep."""
    value = override.value()
    if override.value_type in (ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP):
        values = value.list
    elif override.value_type == ValueType.ELEMENT:
        values = value if isinstance(value, list) else [value]
    else:  # glob, range and interval sweeps: Hydra expands them
        return []
    names = [getattr(v, "text", v) for v in values]  # a quoted item of a sweep stays a QuotedString
    return [n for n in names if isinstance(n, str) and "${" not in n]


def _alternatives(config_dir: Path, group: str, name: str) -> str:
    """What to choose instead: the configs in the deepest existing folder on ``name``'s path."""
    folder = where = config_dir / group
    for part in Path(name).parts:
        if part in ("/", "..") or not (where / part).is_dir():
            break
        where = where / part
    entries = sorted(where.iterdir())
    options = [p.relative_to(folder).with_suffix("").as_posix() for p in entries if p.suffix == ".yaml"]
    options += [f"{p.relative_to(folder).as_posix()}/<name>" for p in entries if p.is_dir()]
    shown = where.relative_to(config_dir.parent).as_posix()
    if not options:
        return f"{shown} holds no configs"
    more = f" and {len(options) - 20} more in {shown}" if len(options) > 20 else ""
    return f"choose one of: {', '.join(options[:20])}{more}"


# ------------------------------------------------------------------------------ unknown keys
def check_keys(config_name: str, overrides: list[str], config_dir: Path = CONFIGS) -> None:
    """Raise a one-line ``ConfigError`` for ``key=value`` whose key the composed config does not have.

    The config is composed with the command line's group choices (each sweep's choices in turn), so a
    key that only an experiment or a loss defines is known when that one is chosen. ``+key=`` (add)
    and ``++key=`` (add or set) are Hydra's ways to add a key and are not checked.
    """
    parsed = parse(overrides)
    if not parsed or any(o.key_or_group.startswith("hydra.searchpath") for o in parsed):
        return
    groups = [o for o in parsed if _is_group(o, config_dir) and not o.is_delete()]
    keys = [
        o
        for o in parsed
        if not _is_group(o, config_dir)
        and o.is_force_add() is False
        and not o.is_add()
        and not o.is_delete()
        and not o.key_or_group.startswith("hydra")
        and "/" not in o.key_or_group
    ]
    if not keys:
        return
    configs = _compositions(config_name, groups, config_dir)
    if not configs:
        return  # the groups do not compose: Hydra says why
    for override in keys:
        key = override.key_or_group
        if not any(_has_key(cfg, key) for cfg in configs):
            raise ConfigError(f"{override.input_line}: {_unknown_key_hint(configs[0], key, config_name)}")


def _group_choices(override: Override) -> list[str]:
    names = _chosen_configs(override)
    if names:
        return names
    value = override.value()
    return [value] if isinstance(value, str) else []


def _group_line(override: Override, choice: str) -> str:
    prefix = "++" if override.is_force_add() else "+" if override.is_add() else ""
    package = f"@{override.package}" if override.package else ""
    return f"{prefix}{override.key_or_group}{package}={choice}"


def _compositions(config_name: str, groups: list[Override], config_dir: Path) -> list[DictConfig]:
    """The config composed with each group's first choice, and once more per other choice of a sweep."""
    first = [_group_line(o, (_group_choices(o) or [None])[0]) for o in groups if _group_choices(o)]
    variants = [first]
    for i, override in enumerate(o for o in groups if _group_choices(o)):
        for choice in _group_choices(override)[1:]:
            variants.append([*first[:i], _group_line(override, choice), *first[i + 1 :]])
    out = []
    for lines in variants[:16]:
        cfg = _compose(config_name, lines, config_dir)
        if cfg is not None:
            out.append(cfg)
    return out


def _compose(config_name: str, overrides: list[str], config_dir: Path) -> DictConfig | None:
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            initialize_config_dir(config_dir=str(config_dir), version_base="1.3"),
        ):
            return compose(config_name=config_name, overrides=overrides)
    except Exception:  # noqa: BLE001 - whatever fails to compose is Hydra's to report
        return None


def _has_key(cfg: DictConfig, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        if isinstance(node, DictConfig) and not node._is_none() and part in node.keys():  # noqa: SIM118 - also ??? values
            node = node._get_node(part)
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
        else:
            return False
    return True


def dotted_keys(node, prefix: str = "") -> list[str]:
    """Every key of a config as a dotted path (``trainer.epochs``), leaves and sections alike."""
    if not isinstance(node, DictConfig) or node._is_none() or node._is_missing():
        return []
    out = []
    for key in node.keys():  # noqa: SIM118
        path = f"{prefix}{key}"
        out.append(path)
        out += dotted_keys(node._get_node(key), f"{path}.")
    return out


def _unknown_key_hint(cfg: DictConfig, key: str, config_name: str) -> str:
    known = [k for k in dotted_keys(cfg) if not k.startswith("hydra")]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close:  # a wrong last part: compare with its siblings only
        parent, _, leaf = key.rpartition(".")
        siblings = [k for k in known if k.rpartition(".")[0] == parent]
        close = difflib.get_close_matches(f"{parent}.{leaf}" if parent else leaf, siblings, n=1, cutoff=0.4)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{config_name} has no key '{key}'; {hint}(+{key}=... adds a new key)"

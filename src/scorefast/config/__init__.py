"""The configuration of a run: nested sections, generated flags, config files.

A :class:`Config` holds one dataclass per section (``sections``: recipe, data, sde, net, objective, optim,
budget, log, launch) and one plug-in object per slot (target, prior, partition, time sampler, weighting, EMA
profile, learning-rate schedule). Every field carries its help text,
its flag name and whether a resumed run may change it (``registry.option``), so the command line, the
config files and the resume check are all generated from the fields and never drift from them.

    cfg = Config(data="moons", out="runs/moons", steps=4000, method="empirical", reference_size=512)
    cfg.target.reference_size, cfg.partition.name, cfg.time_sampler.name   # 512, 'single', 'adaptive'

Keywords are flag names (the ``scorefast train`` flags with underscores). A flag that belongs to a
plug-in that is not selected is an error, not silently ignored. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..choices import DATASETS
from ..dataformats import kind_of_data
from ..errors import UserError
from ..methods.partitions import PARTITIONS, select_partition
from ..methods.priors import PRIORS
from ..methods.targets import TARGETS
from ..registry import Registry, check, coerce, field_type, flag_of, help_of, options_of
from ..time_sampling import TIME_SAMPLERS
from ..weightings import WEIGHTINGS
from .recipes import DEFAULT_RECIPE, RECIPES, data_defaults
from .schedules import EMA_PROFILES, LR_SCHEDULES
from .sections import SECTIONS

SLOTS: dict[str, Registry] = {"target": TARGETS, "prior": PRIORS, "partition": PARTITIONS,
                              "time_sampler": TIME_SAMPLERS, "weighting": WEIGHTINGS, "ema_profile": EMA_PROFILES,
                              "lr_schedule": LR_SCHEDULES}


@dataclass(frozen=True)
class Flag:
    """Where a flag lives: a section field, a slot's selector, or options of some plug-ins of a slot."""

    name: str
    section: str
    owners: tuple[tuple[type, dataclasses.Field], ...]

    @property
    def help(self) -> str:
        return help_of(self.owners[0][1])

    @property
    def locked(self) -> bool:
        return self.owners[0][1].metadata["locked"]

    @property
    def kind(self) -> type:
        return field_type(*self.owners[0])


def _flag_table() -> dict[str, Flag]:
    table: dict[str, Flag] = {}

    def add(flag: Flag) -> None:
        if flag.name in table:
            raise TypeError(f"flag --{flag.name} is declared twice ({table[flag.name].section}, {flag.section})")
        table[flag.name] = flag

    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            add(Flag(flag_of(f), section, ((cls, f),)))
    for slot, registry in SLOTS.items():
        for name, owners in registry.option_owners().items():
            add(Flag(name, slot, tuple(owners)))
    return table


FLAGS: dict[str, Flag] = _flag_table()
SELECTORS: dict[str, str] = {reg.flag: slot for slot, reg in SLOTS.items() if reg.flag}


def selector_help(slot: str) -> str:
    """The help of the flag that selects a slot's plug-in, with every name registered when it is asked for (a
    user's own plug-in included)."""
    reg = SLOTS[slot]
    return f"{reg.title}: one of {reg.listing(with_help=False)} (default: the recipe's, else {reg.default})"


def _coerced(flags: dict, where: str) -> dict:
    unknown = sorted(set(flags) - set(FLAGS) - set(SELECTORS))
    if unknown:
        raise UserError(f"{where}: unknown configuration key(s): {', '.join(map(repr, unknown))}")
    return {k: v if k in SELECTORS else coerce(*FLAGS[k].owners[0], v, where) for k, v in flags.items()
            if v is not None}


def selected(flags: dict, data_kind: str | None = None) -> dict[str, str]:
    """The plug-in each slot selects under these flags: the flag given, else the recipe's default for this kind
    of data, else the slot's own default."""
    given = _coerced(flags, "configuration")
    defaults = RECIPES.get(given.get("recipe", DEFAULT_RECIPE)).defaults(data_kind)
    chosen = {slot: given.get(reg.flag, defaults.get(reg.flag, reg.default))
              for slot, reg in SLOTS.items() if reg.flag}
    chosen["partition"] = select_partition(given)
    return chosen


def applies(flag: str, chosen: dict[str, str]) -> bool:
    """Whether ``flag`` means something under the plug-ins ``chosen``: it is no plug-in's option, or an option
    of a selected one."""
    spec = FLAGS.get(flag)
    return spec is None or spec.section not in SLOTS or any(o.name == chosen[spec.section] for o, _ in spec.owners)


class Config:
    """A run's configuration: the sections (``SECTIONS``) and one plug-in per slot (``SLOTS``).

    Built from flag keywords over the defaults of the recipe (``--recipe``, see ``recipes``); a flag
    given wins over the recipe's, and a recipe option of a plug-in the flags replace is dropped. A recipe
    may set some defaults by the kind of data ('points' or 'image'), so the configuration is resolved once,
    with the data's kind (``data_kind``, else told by ``dataformats.kind_of_data``: a built-in data set's by
    its name, a file's by its header), and says what the run trains from the start. ``given`` records which
    flags were set explicitly."""

    def __init__(self, data_kind: str | None = None, **flags: Any):
        given = _coerced(flags, "configuration")
        self.given: frozenset[str] = frozenset(given)
        spec = given.get("data", DATASETS.default)
        self.data_kind = data_kind or kind_of_data(spec)
        data_kind = self.data_kind
        chosen = selected(given, data_kind)
        name = given.get("recipe", DEFAULT_RECIPE)
        defaults = _coerced({**RECIPES[name].defaults(data_kind), **data_defaults(spec, given)}, f"recipe '{name}'")
        # a recipe's option of a plug-in that is not selected does not apply
        flags = {**{k: v for k, v in defaults.items() if applies(k, chosen)}, **given}
        for section, cls in SECTIONS.items():
            fields = dataclasses.fields(cls)
            setattr(self, section, cls(**{f.name: flags[flag_of(f)] for f in fields if flag_of(f) in flags}))
        if chosen["partition"] == "single":
            flags.pop("intervals", None)  # --intervals 1 is one network
        for slot, registry in SLOTS.items():
            cls = registry.get(chosen[slot])
            mine = {flag_of(f): f for f in options_of(cls)}
            options = {}
            for flag, value in flags.items():
                if FLAGS.get(flag) is None or FLAGS[flag].section != slot:
                    continue
                if flag not in mine:
                    owners = ", ".join(o.name for o, _ in FLAGS[flag].owners)
                    how = f"--{registry.flag} {chosen[slot]}" if registry.flag else f"partition {chosen[slot]}"
                    raise UserError(f"--{flag.replace('_', '-')} is an option of {slot} {owners}, not of the "
                                    f"selected {how}")
                options[mine[flag].name] = value
            setattr(self, slot, registry.create(chosen[slot], **options))

    # -- views ---------------------------------------------------------------------------------------
    def flags(self) -> dict[str, Any]:
        """Every flag with its value (the selected plug-ins' options only); ``Config(**cfg.flags())`` == cfg."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            out.update({flag_of(f): getattr(section, f.name) for f in dataclasses.fields(section)})
        for slot, registry in SLOTS.items():
            plugin = getattr(self, slot)
            if registry.flag:
                out[registry.flag] = plugin.name
            out.update({flag_of(f): getattr(plugin, f.name) for f in options_of(plugin)})
        return out

    def to_dict(self) -> dict:
        """Nested plain data (config.json): {section: {field: value}}, plug-ins with their ``name``."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        out.update({slot: getattr(self, slot).to_dict() for slot in SLOTS})
        return json.loads(json.dumps(out))  # tuples -> lists, as they will be read back

    @classmethod
    def from_dict(cls, data: dict, where: str = "configuration", data_kind: str | None = None) -> Config:
        """Inverse of :meth:`to_dict` (``data_kind``: the kind of the data it was resolved for, when known); one
        clear error for unknown sections or keys and wrong types."""
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a mapping of sections, got {type(data).__name__}")
        flags: dict[str, Any] = {}
        for name, values in data.items():
            owner = SECTIONS.get(name)
            if owner is None and name not in SLOTS:
                raise UserError(f"{where}: unknown section {name!r}")
            if not isinstance(values, dict):
                raise UserError(f"{where}: section '{name}' must be a mapping, got {type(values).__name__}")
            if name in SLOTS:
                values = dict(values)
                plugin = SLOTS[name].get(str(values.pop("name", SLOTS[name].default)))
                owner = plugin
                if SLOTS[name].flag:
                    flags[SLOTS[name].flag] = plugin.name
                elif plugin.name == "single":
                    continue
            known = {f.name: f for f in options_of(owner)}
            for key, value in values.items():
                if key not in known:
                    raise UserError(f"{where}: unknown key {key!r} in section '{name}'")
                flags[flag_of(known[key])] = coerce(owner, known[key], value, where)
        return cls(data_kind, **flags)

    def replace(self, **flags: Any) -> Config:
        """A copy with some flags changed (``given`` keeps the original's plus these); a copy for other data is
        resolved again from the flags given, for that data's kind."""
        mine = self.flags()
        if flags.get("data", self.data.spec) != self.data.spec:
            new = Config(**{**{k: mine[k] for k in self.given}, **flags})
        else:
            new = Config(self.data_kind, **{**mine, **flags})
        new.given = self.given | {k for k, v in flags.items() if v is not None}
        return new

    def edges(self, sde) -> list[float]:
        """The partition's interval edges for this run's SDE and time sampler."""
        return self.partition.edges(sde, self.time_sampler.bind(sde, sde.eps, sde.T))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in self.flags().items() if k in self.given)
        return f"Config({given})"

    # -- checks --------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise UserError (one line) for any value out of range, before anything is written."""
        for name in (*SECTIONS, *SLOTS):
            part = getattr(self, name)
            for f in dataclasses.fields(part):
                check(f, getattr(part, f.name))
            part.validate()
        if getattr(self.lr_schedule, "needs_total", False) and self.budget.max_steps is None:
            raise UserError(f"--lr-schedule {self.lr_schedule.name} needs the run's length: give --steps")
        self.objective.check(sampler=self.log.sampler, fitted_prior=self.prior.needed(self.sde.build()),
                             batch_size=self.optim.batch_size)
        if self.target.draws_own_times and not self.partition.time_conditioned:
            raise UserError(f"--method {self.target.name} draws its own training times; it cannot train "
                            "per-time-point networks")

    def locked_changes(self, saved: Config) -> list[str]:
        """The given flags whose value differs from ``saved``'s although a resumed run may not change them."""
        mine, theirs = self.flags(), saved.flags()
        return [f for f in sorted(self.given) if f in FLAGS and FLAGS[f].locked and mine.get(f) != theirs.get(f)
                or f in SELECTORS and mine.get(f) != theirs.get(f)]


# -- config files ------------------------------------------------------------------------------------

def read_config_file(path: str | Path) -> dict[str, Any]:
    """Flags from a TOML or JSON file: top-level keys, or keys inside [section] tables, are flag names."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' does not exist")
    try:
        text = path.read_text()
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
    except RecursionError:
        raise UserError(f"config file '{path}': is nested too deeply (it holds [section] tables of flags)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"config file '{path}': cannot be read ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}': expected a table of flags, got {type(data).__name__}")
    flags: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in SECTIONS and key not in SLOTS:
                raise UserError(f"config file '{path}': unknown section [{key!r}]")
            for sub, v in value.items():
                where = FLAGS.get(sub).section if sub in FLAGS else SELECTORS.get(sub)
                if where != key:
                    raise UserError(f"config file '{path}': unknown key {sub!r} in [{key}]")
                flags[sub] = v
        elif key in FLAGS or key in SELECTORS:
            flags[key] = value
        else:
            raise UserError(f"config file '{path}': unknown key {key!r}")
    for key, value in flags.items():
        if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (list, dict)) for v in value)):
            raise UserError(f"config file '{path}': --{key} expects a value or a list of values, got nested "
                            f"{'tables' if isinstance(value, dict) else 'lists'}")
        if key in FLAGS:
            cls, f = FLAGS[key].owners[0]
            flags[key] = coerce(cls, f, value, f"config file '{path}'")
        elif not isinstance(value, str):
            raise UserError(f"config file '{path}': --{key} expects str, got {value!r}")
    return flags


def to_toml(cfg: Config) -> str:
    """The resolved configuration as a TOML config file (flags by section; empty values omitted)."""
    import tomli_w
    tables: dict[str, dict[str, Any]] = {}
    for flag, value in cfg.flags().items():
        section = FLAGS[flag].section if flag in FLAGS else SELECTORS[flag]
        if value is not None:
            tables.setdefault(section, {})[flag] = list(value) if isinstance(value, tuple) else value
    return tomli_w.dumps(tables)


__all__ = ["Config", "FLAGS", "SECTIONS", "SELECTORS", "SLOTS", "applies", "read_config_file",
           "selected", "selector_help", "to_toml"]

"""The care playbook: editable rules from (risk, top reasons, customer tags/segment) to an action.

Rules live in ``schemas/defaults/playbook.yaml`` so the care team can change what is done without
touching code. The first rule that matches a scored row wins, and every risk type must have a
default rule, so each row gets exactly one action, channel, queue, SLA and contact cost. The file
is validated with pydantic on load; errors name the rule at fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.settings import DEFAULTS_DIR
from schemas.tasks import REASON_COLUMNS, REASON_COUNT, RISKS, TAG_SEPARATOR, ScoredRows
from tasks.models.explain import Language, ReasonCatalogue

DEFAULT_PLAYBOOK_FILE = DEFAULTS_DIR / "playbook.yaml"

# columns ``apply_playbook`` adds to the scored rows
ACTION_ID, QUEUE, CHANNEL, SLA_HOURS, ACTION_COST, RULE = (
    "action_id", "queue", "channel", "sla_hours", "action_cost", "rule")
EFFECT_PRIOR, EFFECT_PRIOR_SD = "effect_prior", "effect_prior_sd"
PLAYBOOK_COLUMNS = (ACTION_ID, QUEUE, CHANNEL, SLA_HOURS, ACTION_COST, RULE, EFFECT_PRIOR, EFFECT_PRIOR_SD)


class PlaybookError(ValueError):
    """The playbook file is invalid; the message names the file and the rule."""


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class Condition(BaseModel):
    """All given fields must hold; a list means any of its items."""

    model_config = ConfigDict(extra="forbid")
    risk: list[str] | None = None
    reason: list[str] | None = None
    reason_group: list[str] | None = None
    within_top: int = Field(1, ge=1, le=REASON_COUNT)
    tags_any: list[str] | None = None
    segment: list[str] | None = None

    @field_validator("risk", "reason", "reason_group", "tags_any", "segment", mode="before")
    @classmethod
    def _single_to_list(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("risk")
    @classmethod
    def _known_risks(cls, risks: list[str] | None) -> list[str] | None:
        unknown = [r for r in risks or [] if r not in RISKS]
        if unknown:
            raise ValueError(f"unknown risk {unknown}; choose from {list(RISKS)}")
        return risks

    @property
    def is_default(self) -> bool:
        """Only a risk condition (or none): matches every row of its risks."""
        return not (self.reason or self.reason_group or self.tags_any or self.segment)


class Action(BaseModel):
    model_config = ConfigDict(extra="forbid")
    en: str
    zh: str
    channel: str
    cost: float = Field(ge=0)
    effect: float = Field(0.1, ge=-1, le=1, description="prior: share of the loss a contact prevents")
    effect_sd: float = Field(0.1, gt=0, description="how unsure the prior is (standard deviation)")

    def text(self, language: Language) -> str:
        return self.zh if language == "zh" else self.en


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    when: Condition = Condition()
    action: str
    queue: str = Field(min_length=1)
    sla_hours: float = Field(gt=0)
    channel: str | None = None
    cost: float | None = Field(None, ge=0)


class Playbook(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actions: dict[str, Action]
    rules: list[Rule]

    def action_text(self, action_id: str, language: Language) -> str:
        return self.actions[action_id].text(language)


def _rule_label(raw: Any, i: int) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"rule {name!r} (#{i + 1})" if name else f"rule #{i + 1}"


def _short(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'rule'}: {e['msg']}" for e in exc.errors())


def parse_playbook(raw: Any, source: str = "playbook", catalogue: ReasonCatalogue | None = None) -> Playbook:
    """Validate a playbook mapping; every error names the rule (or action) at fault."""
    if not isinstance(raw, dict) or "rules" not in raw or "actions" not in raw:
        raise PlaybookError(f"{source}: needs top-level `actions` and `rules`")
    if not isinstance(raw["actions"], dict) or not isinstance(raw["rules"], list):
        raise PlaybookError(f"{source}: `actions` must be a mapping and `rules` a list")
    actions: dict[str, Action] = {}
    for action_id, spec in raw["actions"].items():
        try:
            actions[str(action_id)] = Action.model_validate(spec)
        except ValidationError as exc:
            raise PlaybookError(f"{source}: action {action_id!r}: {_short(exc)}") from exc
    rules: list[Rule] = []
    for i, spec in enumerate(raw["rules"]):
        label = _rule_label(spec, i)
        try:
            rule = Rule.model_validate(spec)
        except ValidationError as exc:
            raise PlaybookError(f"{source}: {label}: {_short(exc)}") from exc
        for problem in _rule_problems(rule, actions, [r.name for r in rules], catalogue):
            raise PlaybookError(f"{source}: {label}: {problem}")
        rules.append(rule)
    covered = {r for rule in rules if rule.when.is_default for r in (rule.when.risk or RISKS)}
    missing = [r for r in RISKS if r not in covered]
    if missing:
        raise PlaybookError(f"{source}: no default rule (a rule matching on risk only) for {missing}")
    return Playbook(actions=actions, rules=rules)


def _rule_problems(rule: Rule, actions: dict[str, Action], earlier: list[str],
                   catalogue: ReasonCatalogue | None) -> list[str]:
    problems = []
    if rule.name in earlier:
        problems.append("duplicate rule name")
    if rule.action not in actions:
        problems.append(f"unknown action {rule.action!r}; defined actions: {sorted(actions)}")
    if catalogue is not None:
        problems += [f"unknown reason group {g!r}" for g in rule.when.reason_group or [] if g not in catalogue.groups]
        problems += [f"reason {f!r} is not in the reason catalogue" for f in rule.when.reason or []
                     if f not in catalogue.features]
    return problems


def load_playbook(path: Path | str = DEFAULT_PLAYBOOK_FILE, catalogue: ReasonCatalogue | None = None) -> Playbook:
    """Read and validate the playbook; with a catalogue, reason names and groups are checked too."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PlaybookError(f"{path}: not valid YAML: {exc}") from exc
    return parse_playbook(raw, str(path), catalogue)


# ---- matching --------------------------------------------------------------------------------
def tag_sets(tags: pd.Series) -> pd.Series:
    """Comma-separated tag strings to sets (null -> empty)."""
    return tags.map(lambda t: frozenset(s.strip() for s in t.split(TAG_SEPARATOR) if s.strip())
                    if isinstance(t, str) else frozenset())


def rule_matches(rule: Rule, rows: pd.DataFrame, tags: pd.Series, catalogue: ReasonCatalogue) -> np.ndarray:
    """Boolean mask of the rows ``rule`` matches (``tags``: the rows' tag sets)."""
    when = rule.when
    mask = np.ones(len(rows), dtype=bool)
    if when.risk:
        mask &= rows[ScoredRows.risk].isin(when.risk).to_numpy()
    if when.reason or when.reason_group:
        features = set(when.reason or [])
        groups = set(when.reason_group or [])
        hit = np.zeros(len(rows), dtype=bool)
        for name_col, _ in REASON_COLUMNS[: when.within_top]:
            names = rows[name_col]
            hit |= names.isin(features).to_numpy()
            if groups:
                hit |= names.map(lambda f: isinstance(f, str) and catalogue.group_of(f) in groups).to_numpy(bool)
        mask &= hit
    if when.tags_any:
        wanted = frozenset(when.tags_any)
        mask &= tags.map(lambda s: bool(s & wanted)).to_numpy(bool)
    if when.segment:
        segment = rows[ScoredRows.segment] if ScoredRows.segment in rows else pd.Series(None, index=rows.index)
        mask &= segment.isin(when.segment).to_numpy()
    return mask


def apply_playbook(rows: pd.DataFrame, playbook: Playbook, catalogue: ReasonCatalogue) -> pd.DataFrame:
    """Scored rows plus action_id, queue, channel, sla_hours, action_cost, the matching rule and the
    action's prior effect (``effect_prior``, ``effect_prior_sd``)."""
    out = rows.copy()
    n = len(out)
    chosen = np.full(n, -1)
    tags = tag_sets(out[ScoredRows.tags]) if ScoredRows.tags in out else pd.Series([frozenset()] * n, index=out.index)
    for i, rule in enumerate(playbook.rules):
        open_rows = chosen < 0
        if not open_rows.any():
            break
        chosen[open_rows & rule_matches(rule, out, tags, catalogue)] = i
    if (chosen < 0).any():  # cannot happen with a validated playbook; guard against hand-built ones
        raise PlaybookError(f"no rule matched risks {sorted(out.loc[chosen < 0, ScoredRows.risk].unique())}")
    rules = [playbook.rules[i] for i in chosen]
    actions = [playbook.actions[r.action] for r in rules]
    out[ACTION_ID] = pd.Series([r.action for r in rules], index=out.index, dtype="str")
    out[QUEUE] = pd.Series([r.queue for r in rules], index=out.index, dtype="str")
    out[CHANNEL] = pd.Series([r.channel or a.channel for r, a in zip(rules, actions, strict=True)],
                             index=out.index, dtype="str")
    out[SLA_HOURS] = np.array([r.sla_hours for r in rules], dtype=float)
    out[ACTION_COST] = np.array([a.cost if r.cost is None else r.cost for r, a in zip(rules, actions, strict=True)],
                                dtype=float)
    out[RULE] = pd.Series([r.name for r in rules], index=out.index, dtype="str")
    out[EFFECT_PRIOR] = np.array([a.effect for a in actions], dtype=float)
    out[EFFECT_PRIOR_SD] = np.array([a.effect_sd for a in actions], dtype=float)
    return out

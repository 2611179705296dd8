"""The working state of one config load: problems found so far and the plugins known so far.

The loader's steps (declare, default, validate) share one `LoadContext`. Problems are collected, never
raised, so one load reports as many as it can find; each is located by YAML path and turned into
`FILE:LINE: path: message` at the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from epp.config.effective import PluginDecl
from epp.config.problems import Issue, issues_from_pydantic
from epp.config.yamlpos import LineMap, YamlPath, format_path
from epp.errors import ConfigProblem
from epp.framework.plugins import PluginKind
from epp.registry import PluginRegistry, PluginType

__all__ = ["LoadContext", "decorate_param_issue"]


def decorate_param_issue(name: str, type_name: str, issue: Issue, params_at: int) -> Issue:
    """Name the plugin in a parameters problem: `plugin 'kv' (type: t): parameters.foo: unknown ...`."""
    rel = format_path(issue.path[params_at:])
    return Issue(issue.path, f"plugin '{name}' (type: {type_name}): {rel}: {issue.message}")


class LoadContext:
    """Problems, warnings and plugins of one load."""

    def __init__(self, file: str, lines: LineMap, registry: PluginRegistry) -> None:
        self.file = file
        self.lines = lines
        self.registry = registry
        self.issues: list[Issue] = []
        self.warning_issues: list[Issue] = []
        #: usable plugins by name, in build order
        self.plugins: dict[str, PluginDecl] = {}
        #: declared plugins that cannot be built (bad spec, unknown type, bad parameters): references to
        #: them are not reported again, and their kinds are known when their type is
        self.broken: dict[str, str | None] = {}
        #: names of declared plugins (usable or not), in file order
        self.declared: list[str] = []
        #: True when the plugins section itself is unusable: then no reference can be checked
        self.plugins_unknown = False

    # ---- reporting -------------------------------------------------------------------------------

    def error(self, path: YamlPath, message: str) -> None:
        self.issues.append(Issue(tuple(path), message))

    def warn(self, path: YamlPath, message: str) -> None:
        self.warning_issues.append(Issue(tuple(path), message))

    def line(self, path: YamlPath) -> int:
        return self.lines.line_of(path)

    def problem(self, issue: Issue) -> ConfigProblem:
        return ConfigProblem(self.file, self.line(issue.path), format_path(issue.path), issue.message)

    # ---- plugins ---------------------------------------------------------------------------------

    def is_known(self, name: str) -> bool:
        """Declared (usable or not); unknowable when the plugins section is broken."""
        return self.plugins_unknown or name in self.plugins or name in self.broken

    def type_of(self, name: str) -> str | None:
        decl = self.plugins.get(name)
        return decl.type if decl is not None else self.broken.get(name)

    def kinds(self, name: str) -> frozenset[PluginKind] | None:
        """The kinds of a declared plugin, or None when they cannot be known."""
        type_name = self.type_of(name)
        if type_name is None or type_name not in self.registry:
            return None
        return self.registry.get(type_name).kinds

    def describe(self, name: str) -> str:
        type_name = self.type_of(name)
        return f"plugin '{name}' (type: {type_name})" if type_name else f"plugin '{name}'"

    def declared_names(self) -> list[str]:
        return list(self.declared)

    def undefined_ref_message(self, ref: str) -> str:
        declared = self.declared_names()
        known = f" (declared: {', '.join(declared)})" if declared else " (no plugins are declared)"
        return f"references undefined plugin '{ref}'{known}"

    def of_kind(self, kind: PluginKind) -> list[PluginDecl]:
        return [d for d in self.plugins.values() if kind in self.registry.get(d.type).kinds]

    def validate_params(
        self, ptype: PluginType[Any], name: str, raw: Mapping[str, Any] | None, path: YamlPath
    ) -> BaseModel | None:
        """Validate parameters; problems go to `path` + the parameter's own path."""
        try:
            model: BaseModel = ptype.params_model.model_validate({} if raw is None else raw)
            return model
        except ValidationError as exc:
            for issue in issues_from_pydantic(exc, ptype.params_model, noun="parameter", prefix=tuple(path)):
                self.issues.append(decorate_param_issue(name, ptype.type_name, issue, len(path) - 1))
            return None

    def add_default(
        self,
        type_name: str,
        *,
        reason: str,
        path: YamlPath,
        params: Mapping[str, Any] | None = None,
        params_path: YamlPath | None = None,
        name: str | None = None,
    ) -> str | None:
        """Add a plugin the config did not declare; returns its name, or None if it cannot be added.

        A plugin of that name and type that already exists is reused. A name taken by another type, an
        unregistered type or bad parameters are reported (at `params_path` for parameters).
        """
        name = name or type_name
        existing = self.type_of(name)
        if existing is not None:
            if existing == type_name:
                return name if name in self.plugins else None
            self.error(
                path,
                f"cannot add the default {type_name} plugin ({reason}): the name '{name}' is taken by "
                f"{self.describe(name)}",
            )
            return None
        if type_name not in self.registry:
            return None
        ptype = self.registry.get(type_name)
        where = tuple(params_path) if params_path is not None else (*path, "parameters")
        model = self.validate_params(ptype, name, params, where)
        if model is None:
            return None
        self.plugins[name] = PluginDecl(
            name=name,
            type=type_name,
            params=model,
            line=self.line(path),
            path=tuple(path),
            default_reason=reason,
            raw_params=params,
        )
        return name

"""Field ownership and server-side apply, as the stand-in API server implements them.

The API server records in ``metadata.managedFields`` which manager set which field
(``FieldsV1``: ``{"f:spec": {"f:serveConfigV2": {}}}``). An apply by manager M sets the
fields of its configuration, takes them over from managers that set the same value,
answers 409 for fields another manager set to a different value (unless ``force``),
and removes the fields M applied last time but not this time, when no other manager
owns them. An update (create, PUT, merge patch) makes its manager own what it changed.

Simplification, written down: every list is atomic (one field). The real API server
merges lists the schema marks ``x-kubernetes-list-type: map`` or ``set`` by key; the
tests apply whole manifests from one manager, where the two agree.
"""

from __future__ import annotations

import copy
from typing import Any

Path = tuple[str, ...]
OWNED_TOP = ("spec",)
OWNED_META = ("labels", "annotations", "finalizers")


def leaves(obj: dict[str, Any]) -> dict[Path, Any]:
    """Field path -> value for the fields a manager can own (spec and some metadata)."""
    out: dict[Path, Any] = {}

    def walk(value: Any, path: Path) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, (*path, k))
        else:
            out[path] = value

    for key in OWNED_TOP:
        if key in obj:
            walk(obj[key], (key,))
    meta = obj.get("metadata") or {}
    for key in OWNED_META:
        if key in meta:
            walk(meta[key], ("metadata", key))
    return out


def encode(paths: set[Path]) -> dict[str, Any]:
    """``FieldsV1`` of a set of paths."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for part in path:
            node = node.setdefault(f"f:{part}", {})
    return root


def decode(fields: dict[str, Any], prefix: Path = ()) -> set[Path]:
    """Paths of a ``FieldsV1`` tree (leaves only)."""
    out: set[Path] = set()
    for key, sub in fields.items():
        path = (*prefix, key[2:])
        out |= decode(sub, path) if sub else {path}
    return out


def owners(obj: dict[str, Any]) -> dict[tuple[str, str], set[Path]]:
    """(manager, operation) -> owned paths, from ``metadata.managedFields``."""
    return {
        (m["manager"], m["operation"]): decode(m.get("fieldsV1") or {})
        for m in (obj.get("metadata") or {}).get("managedFields") or []
    }


def set_owners(obj: dict[str, Any], table: dict[tuple[str, str], set[Path]], now: str) -> None:
    """Write ``metadata.managedFields``; entries whose set did not change keep their time."""
    before = {(m["manager"], m["operation"]): m for m in obj["metadata"].get("managedFields") or []}
    entries = []
    for (manager, op), paths in sorted(table.items()):
        if not paths:
            continue
        fields = encode(paths)
        old = before.get((manager, op))
        time = old["time"] if old is not None and old.get("fieldsV1") == fields else now
        entries.append({
            "manager": manager, "operation": op, "apiVersion": "ray.io/v1", "time": time,
            "fieldsType": "FieldsV1", "fieldsV1": fields,
        })  # fmt: skip
    if entries:
        obj["metadata"]["managedFields"] = entries
    else:
        obj["metadata"].pop("managedFields", None)


def _get(obj: dict[str, Any], path: Path) -> Any:
    node: Any = obj
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set(obj: dict[str, Any], path: Path, value: Any) -> None:
    node = obj
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = copy.deepcopy(value)


def _remove(obj: dict[str, Any], path: Path) -> None:
    """Delete the field, then parents it leaves empty (not top-level keys)."""
    chain = [obj]
    for part in path[:-1]:
        nxt = chain[-1].get(part)
        if not isinstance(nxt, dict):
            return
        chain.append(nxt)
    chain[-1].pop(path[-1], None)
    for depth in range(len(path) - 1, 1, -1):
        if not chain[depth]:
            chain[depth - 1].pop(path[depth - 1], None)


_MISSING = object()


class ApplyConflict(Exception):
    """Fields another manager set to a different value: [(manager, path)]."""

    def __init__(self, conflicts: list[tuple[str, Path]]) -> None:
        super().__init__(conflicts)
        self.conflicts = conflicts

    def message(self) -> str:
        n = len(self.conflicts)
        lines = [f'conflict with "{m}": .{".".join(p)}' for m, p in self.conflicts]
        return f"Apply failed with {n} conflict{'s' if n > 1 else ''}: " + "\n".join(lines)


def apply(
    current: dict[str, Any] | None,
    applied: dict[str, Any],
    manager: str,
    force: bool,
    now: str,
) -> dict[str, Any]:
    """The object after manager ``manager`` applies ``applied`` to ``current``.

    Raises:
        ApplyConflict: Another manager owns a field ``applied`` sets differently.
    """
    new = (
        copy.deepcopy(current)
        if current is not None
        else {k: copy.deepcopy(v) for k, v in applied.items() if k not in OWNED_TOP}
    )
    table = owners(new) if current is not None else {}
    mine = (manager, "Apply")
    wanted = leaves(applied)
    conflicts = []
    for (other, op), paths in table.items():
        if (other, op) == mine:
            continue
        for path in sorted(paths & wanted.keys()):
            if _get(new, path) != wanted[path]:
                conflicts.append((other, path))
    if conflicts and not force:
        raise ApplyConflict(conflicts)
    for key in table:
        if key != mine:
            table[key] = table[key] - wanted.keys()  # shared when equal, taken when forced
    shared = set().union(*(p for k, p in table.items() if k != mine)) if table else set()
    for path in table.get(mine, set()) - wanted.keys() - shared:
        _remove(new, path)
    for path, value in wanted.items():
        _set(new, path, value)
    for key in ("apiVersion", "kind"):
        new[key] = applied[key]
    table[mine] = set(wanted)
    set_owners(new, table, now)
    return new


def record_update(
    before: dict[str, Any] | None, after: dict[str, Any], manager: str, now: str
) -> None:
    """Make ``manager`` (operation Update) own the fields that differ, in ``after``."""
    old = leaves(before) if before is not None else {}
    new = leaves(after)
    changed = {p for p, v in new.items() if old.get(p, _MISSING) != v}
    table = owners(before) if before is not None else {}
    # Fields that disappeared belong to nobody any more.
    gone = old.keys() - new.keys()
    for key in table:
        table[key] = table[key] - changed - gone
    key = (manager, "Update")
    table[key] = table.get(key, set()) | changed
    set_owners(after, table, now)

"""Field ownership and server-side apply, as the stand-in API server implements them.

The API server records in ``metadata.managedFields`` which manager set which field
(``FieldsV1``: ``{"f:spec": {"f:serveConfigV2": {}}}``). An apply by manager M sets the
fields of its configuration, takes them over from managers that set the same value,
answers 409 for fields another manager set to a different value (unless ``force``),
and removes the fields M applied last time but not this time, when no other manager
owns them. An update (create, PUT, merge patch) makes its manager own what it changed.

Lists: with the object's schema, a list the schema marks ``x-kubernetes-list-type: map``
(containers, env, volumes, volumeMounts and ports by their ``x-kubernetes-list-map-keys``:
the CRD's copy of the core types' ``patchMergeKey``) is merged by key as on the real
server: each element is a field ``k:{"name":"ray-head"}`` with its own fields under it,
so two managers can own different elements (or fields) of one list, and an element a
manager stops applying goes when nobody else owns a field of it. Every other list
(``atomic``, ``set``, or no schema) is one field, replaced whole. Simplification: new
elements are appended; the real server orders them by the applied configurations.
"""

from __future__ import annotations

import copy
import json
from typing import Any

Path = tuple[str, ...]
OWNED_TOP = ("spec", "data", "binaryData", "immutable")
OWNED_META = ("labels", "annotations", "finalizers")


def key_part(item: Any, keys: list[str]) -> str | None:
    """The path element of one element of a map list (``k:{"name":"x"}``), or ``None``
    when it lacks a key field."""
    if not isinstance(item, dict) or not keys or any(k not in item for k in keys[:1]):
        return None
    key = {k: item[k] for k in keys if k in item}
    return "k:" + json.dumps(key, sort_keys=True, separators=(",", ":"))


def leaves(obj: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[Path, Any]:
    """Field path -> value for the fields a manager can own (spec and some metadata);
    map lists of ``schema`` (the object's openAPIV3Schema) are walked by key."""
    out: dict[Path, Any] = {}

    def walk(value: Any, path: Path, sub: dict[str, Any] | None) -> None:
        sub = sub or {}
        if isinstance(value, dict) and value:
            props = sub.get("properties") or {}
            extra = sub.get("additionalProperties")
            for k, v in value.items():
                walk(v, (*path, k), props.get(k) or (extra if isinstance(extra, dict) else None))
        elif isinstance(value, list) and value and sub.get("x-kubernetes-list-type") == "map":
            parts = [key_part(v, sub.get("x-kubernetes-list-map-keys") or []) for v in value]
            if None in parts or len(set(parts)) != len(parts):
                out[path] = value  # not a valid map list: leave it to validation
                return
            for part, item in zip(parts, value, strict=True):
                walk(item, (*path, str(part)), sub.get("items"))
        else:
            out[path] = value

    props = (schema or {}).get("properties") or {}
    for key in OWNED_TOP:
        if key in obj:
            walk(obj[key], (key,), props.get(key))
    meta = obj.get("metadata") or {}
    for key in OWNED_META:
        if key in meta:
            walk(meta[key], ("metadata", key), None)
    return out


def encode(paths: set[Path]) -> dict[str, Any]:
    """``FieldsV1`` of a set of paths."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for part in path:
            node = node.setdefault(part if part.startswith("k:") else f"f:{part}", {})
    return root


def decode(fields: dict[str, Any], prefix: Path = ()) -> set[Path]:
    """Paths of a ``FieldsV1`` tree (leaves only)."""
    out: set[Path] = set()
    for key, sub in fields.items():
        path = (*prefix, key if key.startswith("k:") else key[2:])
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


def _lookup(node: Any, part: str) -> Any:
    """The child ``part`` of a dict, or the element of a map list ``part`` keys."""
    if isinstance(node, dict):
        return node.get(part, _MISSING)
    if isinstance(node, list) and part.startswith("k:"):
        key = json.loads(part[2:])
        for item in node:
            if isinstance(item, dict) and all(item.get(k) == v for k, v in key.items()):
                return item
    return _MISSING


def _get(obj: dict[str, Any], path: Path) -> Any:
    node: Any = obj
    for part in path:
        node = _lookup(node, part)
        if node is _MISSING:
            return _MISSING
    return node


def _set(obj: dict[str, Any], path: Path, value: Any) -> None:
    node: Any = obj
    for i, part in enumerate(path[:-1]):
        child = _lookup(node, part)
        want = list if path[i + 1].startswith("k:") else dict
        if not isinstance(child, want):
            child = want()
            if isinstance(node, list):  # a new element of a map list: its key fields first
                child = json.loads(part[2:])
                node.append(child)
            else:
                node[part] = child
        node = child
    node[path[-1]] = copy.deepcopy(value)


def _delete(node: Any, part: str) -> None:
    if isinstance(node, dict):
        node.pop(part, None)
    elif isinstance(node, list):
        item = _lookup(node, part)
        if item is not _MISSING:
            node.remove(item)


def _remove(obj: dict[str, Any], path: Path) -> None:
    """Delete the field, then parents (and list elements) it leaves empty (not
    top-level keys)."""
    chain: list[Any] = [obj]
    for part in path[:-1]:
        nxt = _lookup(chain[-1], part)
        if not isinstance(nxt, (dict, list)):
            return
        chain.append(nxt)
    _delete(chain[-1], path[-1])
    for depth in range(len(path) - 1, 1, -1):
        if chain[depth]:
            continue
        parent = chain[depth - 1]
        if isinstance(parent, list):  # the element no longer carries its key: by identity
            parent[:] = [item for item in parent if item is not chain[depth]]
        else:
            parent.pop(path[depth - 1], None)


_MISSING = object()


def _removal_order(path: Path) -> tuple[bool, int, Path]:
    """Key fields of map-list elements last (an element is found by them), deepest first."""
    parent = path[-2] if len(path) > 1 else ""
    is_key = parent.startswith("k:") and path[-1] in json.loads(parent[2:])
    return (is_key, -len(path), path)


def field_path(path: Path) -> str:
    """A path as the API server writes it: ``.spec.containers[name="ray-head"].image``."""
    out = ""
    for part in path:
        if part.startswith("k:"):
            key = json.loads(part[2:])
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in key.items()) + "]"
        else:
            out += f".{part}"
    return out


class ApplyConflict(Exception):
    """Fields another manager set to a different value: [(manager, path)]."""

    def __init__(self, conflicts: list[tuple[str, Path]]) -> None:
        super().__init__(conflicts)
        self.conflicts = conflicts

    def message(self) -> str:
        n = len(self.conflicts)
        lines = [f'conflict with "{m}": {field_path(p)}' for m, p in self.conflicts]
        return f"Apply failed with {n} conflict{'s' if n > 1 else ''}: " + "\n".join(lines)


def apply(
    current: dict[str, Any] | None,
    applied: dict[str, Any],
    manager: str,
    force: bool,
    now: str,
    schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The object after manager ``manager`` applies ``applied`` to ``current``
    (``schema``: the object's openAPIV3Schema, for map lists).

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
    wanted = leaves(applied, schema)
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
    for path in sorted(table.get(mine, set()) - wanted.keys() - shared, key=_removal_order):
        _remove(new, path)
    for path, value in wanted.items():
        _set(new, path, value)
    for key in ("apiVersion", "kind"):
        new[key] = applied[key]
    table[mine] = set(wanted)
    set_owners(new, table, now)
    return new


def record_update(
    before: dict[str, Any] | None,
    after: dict[str, Any],
    manager: str,
    now: str,
    schema: dict[str, Any] | None = None,
) -> None:
    """Make ``manager`` (operation Update) own the fields that differ, in ``after``."""
    old = leaves(before, schema) if before is not None else {}
    new = leaves(after, schema)
    changed = {p for p, v in new.items() if old.get(p, _MISSING) != v}
    table = owners(before) if before is not None else {}
    # Fields that disappeared belong to nobody any more.
    gone = old.keys() - new.keys()
    for key in table:
        table[key] = table[key] - changed - gone
    key = (manager, "Update")
    table[key] = table.get(key, set()) | changed
    set_owners(after, table, now)

"""Where schedules live, for the accordion, the REST routes and the Search tab alike.

* presets: ``schedules/*.json`` of the extension (read-only, shipped);
* search results: ``schedules/searches/`` (written by the Search tab);
* user uploads: ``schedules/user/`` or the folder set in Settings > DaTo;
* beside them, what the Search tab's other generators keep: ``schedules/calibrations/`` and ``schedules/gates/``.

Later folders win on a name clash, as in :func:`dato.find_schedules`; an
upload never takes a name that exists anywhere or a reserved word, and is
written atomically (temp file, then ``os.link``, which refuses to replace).
Nothing here imports the WebUI except :func:`user_dir` reading one setting.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import dato
from dato.core.arguments import RESERVED_SCHEDULE_NAMES, SCHEDULE_NONE, SCHEDULE_UNIFORM
from dato.core.schedule import Schedule, ScheduleError, builtin_schedule_dir, schedule_catalog, short_repr

PRESET, SEARCH, USER = "preset", "search", "user"
_LOCK = threading.Lock()


class StoreError(Exception):
    """A schedule request that cannot be served; ``status`` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Entry:
    name: str
    path: Path
    source: str  # preset | search | user

    @property
    def deletable(self) -> bool:
        return self.source != PRESET


def preset_dir() -> Path:
    return builtin_schedule_dir()


def search_dir() -> Path:
    return builtin_schedule_dir() / "searches"


def calibrations_dir() -> Path:
    return search_dir().parent / "calibrations"


def gates_dir() -> Path:
    return search_dir().parent / "gates"


def user_dir() -> Path:
    """The user folder: Settings > DaTo > "Folder for your schedules", else ``schedules/user``."""
    configured = ""
    try:
        from modules import shared

        configured = str(getattr(shared.opts, "dato_schedule_dir", "") or "").strip()
    except Exception:  # outside the WebUI, or settings not loaded yet
        configured = ""
    return Path(configured).expanduser() if configured else builtin_schedule_dir() / "user"


def folders() -> list[tuple[str, Path]]:
    return [(PRESET, preset_dir()), (SEARCH, search_dir()), (USER, user_dir())]


def catalog() -> dict[str, Entry]:
    """Every installed schedule by name (later folders win; :func:`dato.core.schedule.schedule_catalog`)."""
    return {name: Entry(name, path, source) for name, (path, source) in schedule_catalog(folders()).items()}


def names() -> list[str]:
    """Dropdown choices: the two rules first, then installed schedules (presets first, then by name)."""
    entries = catalog().values()
    order = {PRESET: 0, SEARCH: 1, USER: 2}
    return [SCHEDULE_UNIFORM, SCHEDULE_NONE] + [
        e.name for e in sorted(entries, key=lambda e: (order[e.source], e.name.lower()))
    ]


def read(entry: Entry) -> Schedule:
    """An installed schedule file; whatever is wrong with it (a field, not UTF-8, too deep, a number too large)
    is a :class:`ScheduleError` that names the file."""
    try:
        return Schedule.load(entry.path)
    except ScheduleError as exc:
        problem = str(exc)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        problem = short_repr(f"{type(exc).__name__}: {exc}", 200)
    raise ScheduleError(f"schedule file {entry.path.name} ({entry.source}) is invalid: {problem}")


def load(name: str) -> Schedule:
    """The installed schedule ``name``; :class:`ScheduleError` with the known names otherwise."""
    entry = catalog().get(name)
    if entry is None:
        known = ", ".join(sorted(catalog())) or "none"
        raise ScheduleError(f"unknown schedule {short_repr(name)}; installed: {known}")
    return read(entry)


def get(name: str) -> tuple[Entry, Schedule]:
    entry = catalog().get(name)
    if entry is None:
        raise StoreError(f"no schedule named {short_repr(name)}", 404)
    try:
        return entry, read(entry)
    except ScheduleError as exc:  # a file that became invalid: named, never a 500
        raise StoreError(str(exc), 422) from None


def content_hash(name: str) -> str | None:
    try:
        return load(name).content_hash()
    except ScheduleError:
        return None


def find_by_hash(wanted: str) -> str | None:
    for name, entry in catalog().items():
        try:
            if read(entry).content_hash() == wanted:
                return name
        except ScheduleError:
            continue
    return None


def check_new_name(name: str) -> None:
    if not isinstance(name, str):
        raise StoreError(f"schedule name {short_repr(name)}: expected a string", 422)
    if name.strip().lower() in RESERVED_SCHEDULE_NAMES:
        raise StoreError(f"schedule name {short_repr(name)} is reserved ({SCHEDULE_UNIFORM!r} and {SCHEDULE_NONE!r} "
                         "are built-in rules); choose another name", 409)
    existing = catalog().get(name)
    if existing is not None:
        what = "a shipped preset" if existing.source == PRESET else f"a {existing.source} schedule"
        raise StoreError(f"a schedule named {short_repr(name)} already exists ({what}); choose another name", 409)


def save(schedule: Schedule, source: str = USER) -> Entry:
    """Write a new schedule atomically; name collisions are refused (409)."""
    folder = {USER: user_dir(), SEARCH: search_dir()}.get(source)
    if folder is None:
        raise StoreError(f"cannot save to {short_repr(source)}; use 'user' or 'search'", 400)
    with _LOCK:
        check_new_name(schedule.name)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{schedule.name}.json"
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(schedule.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, target)  # fails if target exists: never replaces a file another writer made
            except FileExistsError:
                raise StoreError(f"a schedule named {short_repr(schedule.name)} already exists; choose another name",
                                 409) from None
            except OSError:  # filesystems without hard links
                if target.exists():
                    raise StoreError(f"a schedule named {short_repr(schedule.name)} already exists", 409) from None
                os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return Entry(schedule.name, target, source)


def delete(name: str) -> Entry:
    """Remove a user or search schedule; presets are refused (403)."""
    with _LOCK:
        entry = catalog().get(name)
        if entry is None:
            raise StoreError(f"no schedule named {short_repr(name)}", 404)
        if not entry.deletable:
            raise StoreError(f"{short_repr(name)} is a shipped preset and cannot be deleted", 403)
        entry.path.unlink()
    return entry


def describe(entry: Entry, schedule: Schedule) -> dict:
    """A schedule's summary for listings."""
    return {
        "name": entry.name, "source": entry.source, "deletable": entry.deletable, "steps": schedule.steps,
        "method": schedule.method, "hash": schedule.content_hash(), "description": schedule.description,
        "preview": schedule.preview(), "full_steps": schedule.full_steps,
    }


def ensure_engine_matches() -> str | None:
    """A warning when the imported ``dato`` is not this extension's copy (two checkouts installed)."""
    here = Path(__file__).resolve().parents[2]
    engine = Path(dato.__file__).resolve().parents[1]
    if engine != here:
        return f"sd-webui-dato: using the engine from {engine}, not {here}; remove the other copy"
    return None

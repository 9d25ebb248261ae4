"""Name -> object registries, so a new policy, loss, model or dataset is one decorated function."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not in a registry; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0])


class Registry(Generic[T]):
    """A mapping from names to entries, filled by the `register` decorator."""

    def __init__(self, kind: str, plural: str | None = None):
        self.kind = kind
        self.plural = plural or kind + "s"
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Register under `name`; the same definition imported again (a study file loaded twice) replaces itself,
        a different one under a taken name is an error that says where both come from."""
        def decorate(entry: T) -> T:
            old = self._entries.get(name)
            if name in self._entries and not (_origin(old) == _origin(entry) or _equal(old, entry)):
                raise ValueError(f"{self.kind} {name!r} is registered twice: by {_where(self._entries[name])} "
                                 f"and by {_where(entry)}; give one of them another name")
            self._entries[name] = entry
            return entry

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.plural}: {', '.join(self.names())}"
            ) from None

    def check(self, name: str) -> str:
        """Return `name` if registered, else raise the error that lists valid names."""
        self.get(name)
        return name

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._entries[n]) for n in self.names()]


def _origin(entry: object) -> tuple:
    """Where an entry was defined (its function's file, line and qualified name; a wrapper's `fn`), or itself."""
    fn = getattr(entry, "fn", entry)
    code = getattr(fn, "__code__", None)
    if code is None:
        return (id(entry),)
    return code.co_filename, code.co_firstlineno, getattr(fn, "__qualname__", "")


def _equal(a: object, b: object) -> bool:
    """Equal values (a teacher's recipe registered again from the same file), never an error."""
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - arrays and the like: not equal as values
        return False


def _where(entry: object) -> str:
    origin = _origin(entry)
    return f"{origin[2]} ({origin[0]}:{origin[1]})" if len(origin) == 3 else repr(entry)


def summary(entry: object) -> str:
    """First line of an entry's docstring: what `ablate list` shows."""
    doc = getattr(entry, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""

"""Name -> object registries (methods, models, datasets, scenarios, weight providers).

Style follows timm's ``@register_model``: a decorator puts a factory or class under a
name; lookups of unknown names fail with a :class:`~tta.errors.UserError` that suggests
the closest registered names.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from tta.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to registered objects of one kind (``"method"``, ``"model"``...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` registers the decorated object."""

        def decorate(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorate

    def add(self, name: str, obj: T) -> None:
        existing = self._items.get(name)
        if existing is not None and existing is not obj:
            raise UserError(f"{self.kind} {name!r} is registered twice ({_where(existing)} and {_where(obj)})")
        self._items[name] = obj

    def register_class(self, name: str) -> Callable[[type], type]:
        """Decorator for classes that know their own name: registers ``cls`` and sets ``cls.name``."""

        def decorate(cls: type) -> type:
            cls.name = name
            self.add(name, cls)
            return cls

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UserError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (see `python -m tta.run --list`)"

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._items.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._items


def _where(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


METHODS: Registry = Registry("method")
MODELS: Registry = Registry("model")
DATASETS: Registry = Registry("dataset")
SCENARIOS: Registry = Registry("scenario")
WEIGHTS: Registry = Registry("built-in weights")
TASKS: Registry = Registry("task")  # task name -> metric accumulator class
TRAINING_METHODS: Registry = Registry("training method")  # DG training methods (tta.training)


def register_method(name: str):
    """Register a :class:`tta.methods.base.Method` subclass under ``name`` (sets ``cls.name``)."""
    return METHODS.register_class(name)


def register_training_method(name: str):
    """Register a :class:`tta.training.base.TrainingMethod` subclass under ``name`` (sets ``cls.name``)."""
    return TRAINING_METHODS.register_class(name)

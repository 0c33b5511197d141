"""In-memory routing table: (namespace, name) → the versions of alias `live` and their weights.

The invoke path reads only this cache; deploys, traffic changes and removals invalidate it.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cumulo.runtime.spec import VersionSpec
from cumulo.security.ratelimit import Rate


@dataclass(frozen=True, slots=True)
class Route:
    specs: tuple[VersionSpec, ...]
    cumulative: tuple[int, ...]  # running sum of weights, ends at 100
    public: bool = False  # every live version allows anonymous calls
    rate: Rate | None = None  # the function's rate limit (the newest live version's)

    @classmethod
    def build(cls, weighted: list[tuple[VersionSpec, int]]) -> Route:
        weighted = [(s, w) for s, w in weighted if w > 0]
        specs = tuple(s for s, _ in weighted)
        newest = max(specs, key=lambda s: s.version).config if specs else None
        return cls(
            specs=specs,
            cumulative=tuple(itertools.accumulate(w for _, w in weighted)),
            public=bool(specs) and all(s.config.public for s in specs),
            rate=Rate.parse(newest.rate_limit) if newest and newest.rate_limit else None,
        )

    def pick(self, rng: Callable[[], float] = random.random) -> VersionSpec:
        if len(self.specs) == 1:
            return self.specs[0]
        point = rng() * self.cumulative[-1]
        return self.specs[bisect.bisect_right(self.cumulative, point)]


Loader = Callable[[str, str], Awaitable[Route | None]]


class RouteCache:
    def __init__(self, loader: Loader) -> None:
        self._loader = loader
        self._routes: dict[tuple[str, str], Route] = {}

    async def get(self, namespace: str, name: str) -> Route | None:
        route = self._routes.get((namespace, name))
        if route is None:
            route = await self._loader(namespace, name)
            if route is not None:
                self._routes[(namespace, name)] = route
        return route

    def invalidate(self, namespace: str, name: str) -> None:
        self._routes.pop((namespace, name), None)

    def clear(self) -> None:
        self._routes.clear()

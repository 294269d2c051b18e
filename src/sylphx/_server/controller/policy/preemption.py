"""Preemption policy: which opportunistic shards to stop so a gang run fits.

Victims are the running shards of opportunistic runs, cheapest first: the fewest
shard-seconds lost (the most recently started), then the fewest preemptions so far.
A shard that reached the preemption ceiling is never chosen again.
"""

from __future__ import annotations

from dataclasses import dataclass

from sylphx._core.machines import Resources


@dataclass(frozen=True)
class Victim:
    """A running opportunistic shard attempt that could be stopped."""

    attempt_id: int
    machine: str
    seconds_run: float
    preemptions: int


def choose(
    victims: list[Victim], *, need: Resources, free: Resources, ceiling: int
) -> list[Victim] | None:
    """The cheapest victims whose resources, with ``free``, cover ``need``; None if even
    all of them would not (then preempting anyone is pointless)."""
    eligible = sorted(
        (v for v in victims if v.preemptions < ceiling),
        key=lambda v: (v.seconds_run, v.preemptions, v.attempt_id),
    )
    chosen: list[Victim] = []
    have = free
    for victim in eligible:
        if need.fits_in(have):
            break
        chosen.append(victim)
        have = have + Resources.of_tier(victim.machine)
    return chosen if need.fits_in(have) else None

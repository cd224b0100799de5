"""Placement: which nodes can take a piece of work, ranked and explained; pure functions over views.

Score of a node that fits (higher is better; ties go to the node id, alphabetically):

    score = spare_gib + idle_cores
    spare_gib  = (memory_available_bytes - min_ram) / 2**30
    idle_cores = max(0, min(cores * (1 - cpu_percent / 100), cores - load_1))

One GiB of memory left over after the work's own need counts as much as one idle core; the
idle cores come from the latest CPU use and the 1-minute load, whichever says less is free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from master_service.control.selection import view_tags
from master_service.control.units import GIB, format_size

# Names for the same instruction set, so `--arch arm64` finds a Pi 4 that reports aarch64.
ARCH_ALIASES: Final[Mapping[str, str]] = {
    "arm64": "aarch64",
    "amd64": "x86_64",
    "x64": "x86_64",
    "armhf": "armv7l",
    "i386": "i686",
}
LIVE_STATE: Final = "online"


class RequirementError(ValueError):
    """A requirement that cannot be met by any machine (negative, zero count, ...)."""


@dataclass(frozen=True, slots=True)
class Requirements:
    """What the work needs; None means no requirement."""

    min_ram_bytes: int | None = None  # memory available now, not the machine's total
    min_cores: int | None = None
    max_cpu_percent: float | None = None
    arch: str | None = None
    count: int = 1
    tag: str | None = None  # only nodes that carry this tag are considered at all

    def __post_init__(self) -> None:
        # Strict types: `False` is not 0 %, and "50" is not a number.
        for name, value in (
            ("min_ram_bytes", self.min_ram_bytes),
            ("min_cores", self.min_cores),
            ("count", self.count),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise RequirementError(f"{name} must be a whole number, got {value!r}")
        cpu = self.max_cpu_percent
        if cpu is not None and (isinstance(cpu, bool) or not isinstance(cpu, int | float)):
            raise RequirementError(f"max_cpu_percent must be a number, got {cpu!r}")
        if self.arch is not None and not isinstance(self.arch, str):
            raise RequirementError(f"arch must be text, got {self.arch!r}")
        if self.min_ram_bytes is not None and self.min_ram_bytes < 0:
            raise RequirementError(f"min_ram must be >= 0, got {self.min_ram_bytes}")
        if self.min_cores is not None and self.min_cores < 1:
            raise RequirementError(f"min_cores must be >= 1, got {self.min_cores}")
        if self.max_cpu_percent is not None and not 0 <= self.max_cpu_percent <= 100:
            raise RequirementError(f"max_cpu_percent must be 0-100, got {self.max_cpu_percent}")
        if self.count < 1:
            raise RequirementError(f"count must be >= 1, got {self.count}")
        if self.arch is not None and not self.arch.strip():
            raise RequirementError("arch must not be empty")
        if self.tag is not None and (not isinstance(self.tag, str) or not self.tag):
            raise RequirementError(f"tag must be a non-empty text, got {self.tag!r}")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A node that fits, with its score and the reason it fits."""

    node: str
    score: float
    reason: str
    memory_available_bytes: int
    cpu_cores: int
    idle_cores: float
    cpu_percent: float
    load_1: float | None
    arch: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """A node that does not fit, with every requirement it misses."""

    node: str
    state: str
    misses: list[str]


@dataclass(frozen=True, slots=True)
class Placement:
    """The answer: chosen nodes (best first), others that fit, and those that do not."""

    requirements: Requirements
    chosen: list[Candidate] = field(default_factory=list)
    also_fit: list[Candidate] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def satisfied(self) -> bool:
        """True when as many nodes were found as were asked for."""
        return len(self.chosen) >= self.requirements.count

    def to_dict(self) -> dict[str, Any]:
        """The placement as JSON for the API."""
        return {
            "requirements": asdict(self.requirements),
            "satisfied": self.satisfied,
            "chosen": [asdict(c) for c in self.chosen],
            "also_fit": [asdict(c) for c in self.also_fit],
            "rejected": [asdict(r) for r in self.rejected],
        }


def normalize_arch(arch: str) -> str:
    """One name per instruction set: `arm64` -> `aarch64`, `amd64` -> `x86_64`."""
    lowered = arch.strip().lower()
    return ARCH_ALIASES.get(lowered, lowered)


def idle_cores(cores: int, cpu_percent: float, load_1: float | None) -> float:
    """Cores free now: the smaller of what CPU use and the 1-minute load leave, never below 0."""
    by_cpu = cores * (1 - cpu_percent / 100)
    by_load = cores - load_1 if load_1 is not None else by_cpu
    return max(0.0, min(by_cpu, by_load))


def _number(mapping: Mapping[str, Any], key: str) -> float | None:
    value = mapping.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def evaluate(view: Mapping[str, Any], req: Requirements) -> Candidate | Rejection:
    """Check one node's view (as `ClusterState.views()` gives it) against the requirements."""
    node = str(view.get("node"))
    state = str(view.get("state"))
    if state != LIVE_STATE:
        return Rejection(node, state, [state])  # offline, stale or unknown: nothing else matters
    details = view.get("details") or {}
    metrics = view.get("metrics") or {}
    if not details:
        return Rejection(node, state, ["no machine details yet"])
    if not metrics:
        return Rejection(node, state, ["no metrics yet"])
    misses: list[str] = []
    fits: list[str] = []
    available = _number(metrics, "memory_available_bytes")
    cores_value = _number(details, "cpu_cores")
    cpu = _number(metrics, "cpu_percent")
    load = _number(metrics, "load_1")
    arch = str(details.get("arch") or "")
    if available is None or cores_value is None or cpu is None:
        return Rejection(node, state, ["incomplete metrics (memory, cores or CPU use unknown)"])
    cores = int(cores_value)
    need_ram = req.min_ram_bytes or 0
    if req.min_ram_bytes is not None:
        text = f"{format_size(available)} free (needs {format_size(req.min_ram_bytes)})"
        (fits if available >= req.min_ram_bytes else misses).append(f"ram: {text}")
    if req.min_cores is not None:
        text = f"cores: {cores} (needs {req.min_cores})"
        (fits if cores >= req.min_cores else misses).append(text)
    if req.max_cpu_percent is not None:
        text = f"cpu: {cpu:.0f}% busy (max {req.max_cpu_percent:g}%)"
        (fits if cpu <= req.max_cpu_percent else misses).append(text)
    if req.arch is not None:
        wanted = normalize_arch(req.arch)
        text = f"arch: {arch or 'unknown'} (needs {wanted})"
        (fits if normalize_arch(arch) == wanted else misses).append(text)
    if misses:
        return Rejection(node, state, misses)
    idle = idle_cores(cores, cpu, load)
    spare_gib = (available - need_ram) / GIB
    score = round(spare_gib + idle, 3)
    fits.append(f"score {score:.2f} = {spare_gib:.2f} spare GiB + {idle:.2f} idle cores")
    return Candidate(
        node=node,
        score=score,
        reason="; ".join(fits),
        memory_available_bytes=int(available),
        cpu_cores=cores,
        idle_cores=round(idle, 3),
        cpu_percent=cpu,
        load_1=load,
        arch=arch,
    )


def place(views: Iterable[Mapping[str, Any]], req: Requirements) -> Placement:
    """Rank the nodes that fit (best first), keep the best `count`, explain every other node.

    With a `tag`, nodes without it are not candidates and are not listed either.
    """
    fitting: list[Candidate] = []
    rejected: list[Rejection] = []
    for view in views:
        if req.tag is not None and req.tag not in view_tags(view):
            continue
        verdict = evaluate(view, req)
        if isinstance(verdict, Candidate):
            fitting.append(verdict)
        else:
            rejected.append(verdict)
    fitting.sort(key=lambda c: (-c.score, c.node))
    rejected.sort(key=lambda r: r.node)
    return Placement(req, fitting[: req.count], fitting[req.count :], rejected)


def render_placement(data: Mapping[str, Any]) -> Sequence[str]:
    """Human-readable lines for the CLI, from the JSON form (`Placement.to_dict()`)."""
    count = int(data["requirements"]["count"])
    chosen, also_fit, rejected = data["chosen"], data["also_fit"], data["rejected"]
    tag = data["requirements"].get("tag")
    within = f" among nodes tagged {tag}" if tag else ""
    lines = [f"chosen ({len(chosen)} of {count} wanted{within}):"]
    lines += [f"  {c['node']}: {c['reason']}" for c in chosen] or ["  (none)"]
    if also_fit:
        lines.append("also fit:")
        lines += [f"  {c['node']}: {c['reason']}" for c in also_fit]
    if rejected:
        lines.append("do not fit:")
        lines += [f"  {r['node']}: {'; '.join(r['misses'])}" for r in rejected]
    return lines

"""Placement over node views, and human sizes: pure functions, no broker."""

from __future__ import annotations

from typing import Any

import pytest

from master_service.control.placement import (
    Candidate,
    Rejection,
    RequirementError,
    Requirements,
    evaluate,
    idle_cores,
    normalize_arch,
    place,
    render_placement,
)
from master_service.control.units import GIB, SizeError, format_size, parse_size

MIB = 1024**2


def view(
    node: str,
    *,
    state: str = "online",
    ram_gib: float = 4,
    free_gib: float = 3,
    cores: int = 4,
    cpu: float = 10.0,
    load: float | None = 0.5,
    arch: str = "aarch64",
    details: bool = True,
    metrics: bool = True,
) -> dict[str, Any]:
    return {
        "node": node,
        "state": state,
        "details": {"ram": int(ram_gib * GIB), "cpu_cores": cores, "arch": arch}
        if details
        else None,
        "metrics": {
            "memory_available_bytes": int(free_gib * GIB),
            "cpu_percent": cpu,
            "load_1": load,
        }
        if metrics
        else None,
    }


# -- units ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MiB", 512 * MIB),
        ("2GiB", 2 * GIB),
        ("2Gi", 2 * GIB),
        ("2gib", 2 * GIB),
        ("1.5GiB", int(1.5 * GIB)),
        ("2G", 2_000_000_000),
        ("2GB", 2_000_000_000),
        ("500M", 500_000_000),
        ("64k", 64_000),
        ("1024", 1024),
        (" 3 GiB ", 3 * GIB),
        (4096, 4096),
    ],
)
def test_sizes_follow_si_for_letters_and_iec_for_i_forms(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "2 X", "-1G", "2iB", "1e3", "two", True, -5])
def test_sizes_that_are_not_sizes_are_refused_with_an_example(text):
    with pytest.raises(SizeError):
        parse_size(text)


def test_format_size_uses_binary_units():
    assert format_size(1.5 * GIB) == "1.5 GiB"
    assert format_size(512 * MIB) == "512 MiB"
    assert format_size(900) == "900 B"


# -- single nodes ------------------------------------------------------------------------------


def test_arch_aliases_name_the_same_instruction_set():
    assert normalize_arch("arm64") == normalize_arch("AArch64") == "aarch64"
    assert normalize_arch("amd64") == "x86_64"
    assert normalize_arch("armv7l") == "armv7l"


def test_idle_cores_take_the_smaller_of_cpu_and_load_and_never_go_negative():
    assert idle_cores(4, 25.0, 0.5) == 3.0  # CPU says 3 free, load says 3.5
    assert idle_cores(4, 10.0, 3.0) == 1.0  # load says only 1 free
    assert idle_cores(4, 10.0, 9.0) == 0.0
    assert idle_cores(2, 50.0, None) == 1.0


@pytest.mark.parametrize("state", ["offline", "stale", "unknown"])
def test_a_node_that_is_not_live_misses_only_its_state(state):
    verdict = evaluate(view("n1", state=state), Requirements(min_ram_bytes=GIB))
    assert verdict.misses == [state]  # type: ignore[union-attr]


def test_every_missed_requirement_is_named_with_what_the_node_has():
    req = Requirements(
        min_ram_bytes=2 * GIB, min_cores=8, max_cpu_percent=50, arch="x86_64", count=1
    )
    verdict = evaluate(view("small", free_gib=0.5, cores=4, cpu=80.0), req)
    assert verdict.misses == [  # type: ignore[union-attr]
        "ram: 512 MiB free (needs 2.0 GiB)",
        "cores: 4 (needs 8)",
        "cpu: 80% busy (max 50%)",
        "arch: aarch64 (needs x86_64)",
    ]


def test_nodes_without_details_or_metrics_are_explained():
    assert evaluate(view("a", details=False), Requirements()).misses == [  # type: ignore[union-attr]
        "no machine details yet"
    ]
    assert evaluate(view("b", metrics=False), Requirements()).misses == [  # type: ignore[union-attr]
        "no metrics yet"
    ]


def test_a_fitting_node_says_why_and_shows_its_score():
    verdict = evaluate(view("big", free_gib=6, cores=4, cpu=25.0, load=0.5), Requirements(2 * GIB))
    assert verdict.score == 7.0  # type: ignore[union-attr]
    assert verdict.reason == (  # type: ignore[union-attr]
        "ram: 6.0 GiB free (needs 2.0 GiB); score 7.00 = 4.00 spare GiB + 3.00 idle cores"
    )


def test_arm64_requirement_matches_a_node_reporting_aarch64():
    verdict = evaluate(view("pi"), Requirements(arch="arm64"))
    assert "arch: aarch64 (needs aarch64)" in verdict.reason  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "options",
    [
        {"min_ram_bytes": -1},
        {"min_cores": 0},
        {"max_cpu_percent": 101},
        {"count": 0},
        {"arch": ""},
        # Strict types: a boolean is not a number, text is not a number, 2.5 is not a count.
        {"max_cpu_percent": False},
        {"max_cpu_percent": "50"},
        {"min_cores": True},
        {"count": 2.5},
        {"min_ram_bytes": "1GiB"},
        {"arch": 64},
    ],
)
def test_impossible_requirements_are_refused(options):
    with pytest.raises(RequirementError):
        Requirements(**options)


def test_a_zero_cpu_limit_is_a_number_not_a_boolean():
    busy = view("pi", cpu=1.0)
    assert isinstance(evaluate(busy, Requirements(max_cpu_percent=0)), Rejection)
    assert isinstance(evaluate(busy, Requirements(max_cpu_percent=1)), Candidate)


# -- ranking a cluster ---------------------------------------------------------------------


def cluster() -> list[dict[str, Any]]:
    return [
        view("pi-small", ram_gib=1, free_gib=0.6, cores=1, cpu=5.0, load=0.1, arch="armv6l"),
        view("pi-mid", ram_gib=4, free_gib=3.0, cores=4, cpu=20.0, load=1.0),
        view("pi-big", ram_gib=8, free_gib=7.0, cores=4, cpu=10.0, load=0.2),
        view("pi-busy", ram_gib=8, free_gib=7.5, cores=4, cpu=95.0, load=3.9),
        view("pi-off", state="offline", ram_gib=16, free_gib=15),
    ]


def test_place_ranks_by_score_and_explains_the_rest():
    result = place(cluster(), Requirements(min_ram_bytes=2 * GIB, min_cores=4, count=2))
    assert [c.node for c in result.chosen] == ["pi-big", "pi-busy"]
    assert [c.node for c in result.also_fit] == ["pi-mid"]
    assert {r.node: r.misses for r in result.rejected} == {
        "pi-off": ["offline"],
        "pi-small": ["ram: 614 MiB free (needs 2.0 GiB)", "cores: 1 (needs 4)"],
    }
    assert result.satisfied


def test_a_cpu_limit_drops_the_busy_node():
    result = place(cluster(), Requirements(min_ram_bytes=2 * GIB, max_cpu_percent=50, count=3))
    assert [c.node for c in result.chosen] == ["pi-big", "pi-mid"]
    assert not result.satisfied  # three wanted, two fit
    busy = next(r for r in result.rejected if r.node == "pi-busy")
    assert busy.misses == ["cpu: 95% busy (max 50%)"]


def test_ties_go_to_the_node_id_so_answers_are_stable():
    views = [view("b"), view("a"), view("c")]
    assert [c.node for c in place(views, Requirements(count=3)).chosen] == ["a", "b", "c"]


def test_render_lists_chosen_also_fit_and_misfits():
    data = place(cluster(), Requirements(min_ram_bytes=2 * GIB, count=1)).to_dict()
    lines = render_placement(data)
    assert lines[0] == "chosen (1 of 1 wanted):"
    assert lines[1].startswith("  pi-big: ram: 7.0 GiB free")
    assert "do not fit:" in lines
    assert "  pi-off: offline" in lines

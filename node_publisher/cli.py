"""The `cluster-node` command: `run`, `sample` and `say TEXT`; the wiring and logging live here."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import psutil

from cluster_protocol import Envelope, MessageType
from cluster_protocol.config import SettingsError
from node_publisher.app import NodeAgent
from node_publisher.collectors import PsutilLike
from node_publisher.commands import CommandProcessor, advertised_details
from node_publisher.sampler import Sampler
from node_publisher.say import DEFAULT_SAY_TIMEOUT_S, DeliveryError, say
from node_publisher.settings import PublisherSettings, add_settings_arguments, settings_from_flags

logger = logging.getLogger(__name__)

PROG: Final = "cluster-node"
# How long `sample` measures CPU use over: long enough to mean something, short for a CLI.
SAMPLE_WINDOW_S: Final = 0.5
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STOP_POLL_S: Final = 10.0

Command = Callable[[PublisherSettings, argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its three subcommands, each taking every settings flag."""
    # No abbreviations: `--password` must not quietly mean `--password-file`.
    parser = argparse.ArgumentParser(
        prog=PROG, description="picluster node agent", allow_abbrev=False
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_parser = commands.add_parser(
        "run", help="publish metrics until stopped", allow_abbrev=False
    )
    add_settings_arguments(run_parser)
    sample_parser = commands.add_parser(
        "sample", help="print one details and one metrics envelope", allow_abbrev=False
    )
    add_settings_arguments(sample_parser)
    say_parser = commands.add_parser(
        "say", help="publish one free-text message", allow_abbrev=False
    )
    say_parser.add_argument("text", help="the message")
    say_parser.add_argument(
        "--timeout", type=float, default=DEFAULT_SAY_TIMEOUT_S, help="seconds to wait for PUBACK"
    )
    add_settings_arguments(say_parser)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Parse, validate settings (exit 2 on a bad one, before connecting), run a command."""
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_flags(vars(args), os.environ if environ is None else environ)
    except SettingsError as error:
        _error(f"bad setting {error}")
        return 2
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT)
    command: Command = COMMANDS[args.command]
    return command(settings, args)


def run(settings: PublisherSettings, args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM or SIGINT, then publish "offline" and exit 0."""
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        logger.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        agent, processor = build_agent(settings)
    except (OSError, sqlite3.Error) as error:
        _error(f"bad setting state_dir: cannot use {settings.state_dir}: {error}")
        return 2
    processor.start()
    agent.start()
    # The signal wakes this wait at once (Linux hands a process's signal to its main thread);
    # the timeout is only a safety net, so the main thread costs nothing per sample.
    while not stop.wait(STOP_POLL_S):
        pass
    processor.stop()
    agent.stop()
    return 0


def sample(settings: PublisherSettings, args: argparse.Namespace) -> int:
    """Print one machine_details and one metrics envelope, one JSON object per line."""
    # Details as `run` sends them, built from this sample (check every time: 0 s).
    extra = advertised_details(settings)
    sampler = Sampler(settings, psutil, extra_details=extra, details_check_every_s=0.0)
    sampler.prime()
    time.sleep(SAMPLE_WINDOW_S)
    metrics, _ = sampler.measure()
    metrics["spool_dropped"] = 0
    details: object = sampler.details or {}
    now = time.time()
    node = settings.node_id
    for seq, (message_type, payload) in enumerate(
        ((MessageType.MACHINE_DETAILS, details), (MessageType.METRICS, metrics))
    ):
        envelope = Envelope(type=message_type, node=node, ts=now, seq=seq, payload=payload)
        _write(json.dumps(envelope.to_dict(), allow_nan=False))
    return 0


def say_command(settings: PublisherSettings, args: argparse.Namespace) -> int:
    """Publish one message; exit 1 with the reason when it was not delivered."""
    try:
        say(settings, args.text, args.timeout)
    except DeliveryError as error:
        _error(str(error))
        return 1
    return 0


def build_agent(
    settings: PublisherSettings, ps: PsutilLike = psutil, **options: Any
) -> tuple[NodeAgent, CommandProcessor]:
    """A NodeAgent with commands wired in (start the processor, then the agent)."""
    processor = CommandProcessor(settings, ps=ps)
    agent = NodeAgent(
        settings,
        ps=ps,
        command_handler=processor,
        extra_details=advertised_details(settings),
        **options,
    )
    processor.bind(agent)  # applies an interval set by an earlier command
    return agent, processor


COMMANDS: Final[Mapping[str, Command]] = {"run": run, "sample": sample, "say": say_command}


def _write(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: {message}\n")

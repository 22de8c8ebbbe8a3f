"""Command line: `sidecar run | check-config | version` (DESIGN §2).

Exit codes: 0 ok, 1 runtime failure, 2 usage or config error."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from sidecar import __version__
from sidecar.config import Config, ConfigError, load_config

log = logging.getLogger("sidecar")


def _print_config_errors(path: str, err: ConfigError) -> None:
    print(f"{path}: invalid configuration ({len(err.problems)} problem(s))", file=sys.stderr)
    for problem in err.problems:
        print(f"  {problem}", file=sys.stderr)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        _print_config_errors(args.config, err)
        return 2
    print(f"{args.config}: ok (service {config.service.name})")
    return 0


async def _serve(config: Config, config_path: str, config_dir: Path) -> int:
    from sidecar.app import ListenError, Sidecar

    sidecar = Sidecar(config, config_dir=config_dir)
    try:
        await sidecar.start()
    except ListenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        try:
            new = load_config(config_path)
        except ConfigError as err:
            log.error("reload rejected, keeping the running config: %s", "; ".join(err.problems))
            return
        sidecar.reload(new)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    log.info(
        "sidecar %s for %s: inbound %s, outbound %s, admin %s",
        __version__,
        config.service.name,
        config.listeners.inbound,
        config.listeners.outbound,
        config.listeners.admin,
    )
    await stop.wait()
    log.info("shutting down: draining in-flight requests (up to %ss)", config.limits.drain_timeout)
    await sidecar.drain()
    await sidecar.stop()
    log.info("stopped")
    return 0


def run_loop(coro_factory: object) -> int:
    """Run on uvloop when available (the fast path), else the default loop."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return int(runner.run(coro_factory()))  # type: ignore[operator]


def cmd_run(args: argparse.Namespace) -> int:
    from sidecar.logsetup import setup_logging

    try:
        config = load_config(args.config)
    except ConfigError as err:
        _print_config_errors(args.config, err)
        return 2
    setup_logging(args.log_level or config.logging.level, config.logging.format)
    config_dir = Path(args.config).resolve().parent
    return run_loop(lambda: _serve(config, args.config, config_dir))


def cmd_version(args: argparse.Namespace) -> int:
    print(f"sidecar {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar", description="Observability and resilience sidecar"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the sidecar")
    p.add_argument("-c", "--config", required=True, help="config file (YAML)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("-c", "--config", required=True, help="config file (YAML)")
    p.set_defaults(func=cmd_check_config)

    from sidecar import demo
    from sidecar.diagnose import command as diagnose_command

    p = sub.add_parser("diagnose", help="latency diagnosis from traces (Jaeger, admin, file)")
    diagnose_command.configure(p)
    p.set_defaults(func=diagnose_command.main)

    from sidecar.top import command as top_command

    p = sub.add_parser("top", help="live traffic view over sidecars' admin ports")
    top_command.configure(p)
    p.set_defaults(func=top_command.main)

    p = sub.add_parser("demo", help="run the embedded demo (the whole product in one command)")
    demo.configure(p)
    p.set_defaults(func=demo.main)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()

"""Command line: `sidecar run | check-config | diagnose | top | demo | version`.

Exit codes: 0 ok, 1 runtime failure, 2 usage or config error."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sidecar import BUILD, __version__
from sidecar.config import Config, ConfigError, apply_env, load_config, parse_yaml
from sidecar.config_check import file_problems

log = logging.getLogger("sidecar")


def _print_config_errors(path: str, err: ConfigError) -> None:
    print(f"{path}: invalid configuration ({len(err.problems)} problem(s))", file=sys.stderr)
    for problem in err.problems:
        print(f"  {problem}", file=sys.stderr)


def _raw_config(path: str) -> Any:
    """The file's data with environment overrides, for the file checks of a config the
    schema rejected (None when the file itself can't be read or parsed)."""
    try:
        return apply_env(parse_yaml(Path(path).read_text()) or {}, os.environ)
    except Exception:
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    """Everything that would fail at run time and can be found without the network: the
    schema, cross-field conflicts, and the files the config names, all reported at once."""
    base_dir = Path(args.config).resolve().parent
    try:
        config = load_config(args.config)
    except ConfigError as err:
        problems = [*err.problems, *file_problems(_raw_config(args.config), base_dir)]
        _print_config_errors(args.config, ConfigError(problems))
        return 2
    problems = file_problems(config.model_dump(mode="json", by_alias=True), base_dir)
    if problems:
        _print_config_errors(args.config, ConfigError(problems))
        return 2
    print(f"{args.config}: ok (service {config.service.name})")
    return 0


async def _serve(config: Config, config_path: str, config_dir: Path) -> int:
    from sidecar.app import ListenError, Sidecar
    from sidecar.runtime import install_signals

    sidecar = Sidecar(config, config_dir=config_dir)
    try:
        await sidecar.start()
    except ListenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # Start-up objects (modules, config, pydantic validators) live as long as the process:
    # move them out of the collector's generations so full collections stop walking them.
    gc.collect()
    gc.freeze()
    # Each proxied request allocates a few dozen short-lived containers, so the default
    # threshold (700) runs a young-generation collection every few requests. A larger one
    # runs it ~70x less often for the same total work; reference cycles still go.
    gc.set_threshold(50_000, 20, 20)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        try:
            new = load_config(config_path)
        except ConfigError as err:
            log.error("reload rejected, keeping the running config: %s", "; ".join(err.problems))
            return
        sidecar.reload(new)

    install_signals(loop, stop=stop.set, reload=reload)
    log.info(
        "sidecar %s (%s) for %s: inbound %s, outbound %s, admin %s",
        __version__,
        BUILD,
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
    print(f"data path: {BUILD}")
    return 0


# Subcommands whose modules pull in rich and the aiohttp client: imported only when chosen,
# so `sidecar run` does not carry them (~3 MiB of RSS). (name, module, help)
_LAZY_COMMANDS = (
    ("diagnose", "sidecar.diagnose.command", "latency diagnosis from traces (Jaeger, admin, file)"),
    ("top", "sidecar.top.command", "live traffic view over sidecars' admin ports"),
    ("demo", "sidecar.demo.command", "run the embedded demo (the whole product in one command)"),
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with `only`, the lazily imported subcommands other than `only` are
    listed (for --help) but not configured, so their modules are not imported."""
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

    for name, module, help_text in _LAZY_COMMANDS:
        p = sub.add_parser(name, help=help_text)
        if only is None or only == name:
            command = importlib.import_module(module)
            command.configure(p)
            p.set_defaults(func=command.main)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # The top-level parser has no options but -h, so the first word is the command.
    first = next((a for a in args_list if not a.startswith("-")), "")
    args = build_parser(only=first).parse_args(args_list)
    code: int = args.func(args)
    return code


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()

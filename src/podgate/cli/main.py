"""``podgate`` / ``kubectl podgate``: controller, status and gate commands, plus plugged-in ones.

Other distributions add commands through the ``podgate.commands`` entry-point group (a callable
taking the sub-parsers object): the sandbox's ``podgate sandbox …`` comes that way, so the
product's CLI never imports sandbox code.  Building the parser reads no ``PODGATE_*`` setting:
``podgate controller`` reads them when it runs, so a bad one never breaks another command.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import entry_points

from podgate.cli import controller_cmd, gates_cmd

PLUGIN_GROUP = "podgate.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podgate", description="Pod readiness gates that follow the load balancer."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gates_cmd.add_commands(sub, os.environ.get("KUBECONFIG"))
    ctl = sub.add_parser("controller", help="run the podgate controller and admission webhook")
    controller_cmd.add_arguments(ctl)
    ctl.set_defaults(func=controller_cmd.cmd_controller)
    for plugin in entry_points(group=PLUGIN_GROUP):
        plugin.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        sys.exit(args.func(args))
    except gates_cmd.CommandError as e:
        print(f"podgate: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)

"""The command line explains itself: every subcommand has a description, every flag a help line,
and a flag with a default says what it is."""
import argparse

from resbench.cli import build_parser


def subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_subcommand_has_a_description_and_every_flag_a_help_line():
    for name, sub in subcommands().items():
        assert sub.description and len(sub.description) > 40, f"`resbench {name}` has no description"
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = "/".join(action.option_strings) or action.dest
            assert action.help, f"`resbench {name} {flag}` has no help"
            if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
                assert "default" in action.help, f"`resbench {name} {flag}` does not say its default ({action.default!r})"

"""The programs that setup commands run, and whether this machine has them
(docs/faults.md row 40: said by ``init``, ``doctor`` and ``plan`` before ``up`` fails).

A list command runs its first element.  A string runs through ``/bin/sh -c``:
each simple command in it (split at ``&&``, ``||``, ``;``, ``|``, ``&``, and
parentheses) runs its first word after ``VAR=value`` assignments, unless that
word is a shell builtin or keyword.  What cannot be known before the command
runs is not guessed: a word with ``$``, quotes expanded at run time, globs, or
a relative path (a script that comes with the checkout) is left to ``up``.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from hybridiso.errors import UserError
from hybridiso.manifest import Command, Manifest

# words after which the next word starts a command again
_KEYWORDS_THEN_COMMAND = frozenset({"if", "then", "else", "elif", "while", "until", "do", "!", "{", "time"})
# words that end a construct and run nothing
_KEYWORDS_ALONE = frozenset({"fi", "done", "}", "esac"})
# constructs whose words are not commands; the analysis stops there
_KEYWORDS_OPAQUE = frozenset({"case", "function", "select"})
_BUILTINS = frozenset(
    {
        ".", ":", "[", "alias", "bg", "break", "cd", "continue", "echo", "eval", "exit", "export", "false",
        "fg", "getopts", "hash", "jobs", "kill", "local", "printf", "pwd", "read", "readonly", "return",
        "set", "shift", "source", "test", "times", "trap", "true", "type", "ulimit", "umask", "unalias",
        "unset", "wait",
    }
)
# builtins that run the next word
_WRAPPERS = frozenset({"exec", "command", "builtin"})
_OPERATORS = frozenset({"&&", "||", ";", ";;", "|", "&", "(", ")", "|&"})
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.DOTALL)
_UNKNOWABLE = re.compile(r"[$`*?\[\]~{}]")


@dataclass(frozen=True)
class Missing:
    agent: str
    command: str
    program: str
    why: str  # "not found on PATH", "not executable", ...

    def problem(self) -> str:
        return f"setup `{self.command}` runs {self.program!r}, which is {self.why}"

    def describe(self) -> str:
        return f"{self.agent}: {self.problem()}"


def programs(command: Command) -> list[str]:
    """The programs ``command`` starts, as far as can be told before it runs.
    Raises ValueError when ``/bin/sh`` could not parse the string."""
    if isinstance(command, list):
        return [command[0]] if command else []
    return list(_shell_programs(command))


def _shell_programs(text: str) -> Iterator[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()<>\n")
    lexer.whitespace = " \t\r"  # a newline ends a command, like ';'
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)  # ValueError: "No closing quotation"
    expect_command = True
    skip_target = False
    for i, token in enumerate(tokens):
        if skip_target:  # the file after a redirection
            skip_target = False
            continue
        if token in _OPERATORS or token.strip("\n") == "":
            expect_command = True
            continue
        if token[0] in "<>" or (token[0] == "&" and token[1:2] == ">"):
            if "<<" in token:
                return  # a here-document: its body is not commands
            skip_target = True
            continue
        if token.isdigit() and i + 1 < len(tokens) and tokens[i + 1][0] in "<>":
            continue  # the descriptor of a redirection, as in 2>/dev/null
        if not expect_command:
            continue
        if token in _KEYWORDS_OPAQUE:
            return
        if token in _KEYWORDS_THEN_COMMAND or token in _KEYWORDS_ALONE:
            continue
        if _ASSIGNMENT.fullmatch(token):
            continue  # VAR=value before the program
        if token in _WRAPPERS:
            continue
        expect_command = False
        if token in _BUILTINS or token == "for":
            continue
        yield token


def check_program(program: str, path: str) -> str | None:
    """Why ``program`` cannot run here (None: it can, or it cannot be told)."""
    if _UNKNOWABLE.search(program):
        return None
    if "/" in program:
        if not os.path.isabs(program):
            return None  # relative to the environment: comes with the checkout
        if not os.path.exists(program):
            return "not there"
        if not os.access(program, os.X_OK) or os.path.isdir(program):
            return "not executable"
        return None
    if shutil.which(program, path=path) is None:
        return "not installed (not found on PATH)"
    return None


def missing_programs(agent: str, commands: list[Command], env: Mapping[str, str]) -> list[Missing]:
    """Setup programs of ``agent`` that this machine lacks.  ``env`` is the
    agent's own variables: a PATH there is the PATH setup runs with."""
    path = env.get("PATH", os.environ.get("PATH", os.defpath))
    found: list[Missing] = []
    for command in commands:
        shown = command if isinstance(command, str) else shlex.join(command)
        try:
            names = programs(command)
        except ValueError as e:
            found.append(Missing(agent, shown, "/bin/sh", f"unable to parse it ({e})"))
            continue
        for name in dict.fromkeys(names):
            why = check_program(name, path)
            if why is not None:
                found.append(Missing(agent, shown, name, why))
    return found


def setup_missing(manifest: Manifest) -> list[Missing]:
    """Every agent's setup programs this machine lacks.  Setup runs on the
    host today, for container agents too (setup_runner.py)."""
    found: list[Missing] = []
    for agent in manifest.agents:
        found += missing_programs(agent.name, manifest.setup_for(agent), manifest.env_for(agent))
    return found


def missing_images(images: list[str]) -> tuple[list[str], str | None]:
    """The images that are not on this machine (``up`` would have to pull
    them), and why none could be checked (Docker not reachable), if so."""
    if not images:
        return [], None
    from hybridiso.containers import docker_client

    ok, why = docker_client.reachable()
    if not ok:
        return [], why
    missing: list[str] = []
    for image in dict.fromkeys(images):
        try:
            with docker_client.api_errors(f"look up image {image}"):
                present = docker_client.image_present(image)
        except UserError as e:  # an invalid reference, say: up would fail on it too
            return [*missing, image], e.message
        if not present:
            missing.append(image)
    return missing, None

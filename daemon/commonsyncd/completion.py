"""``commonsync completion bash|zsh|fish``: shell completion, generated from the parser.

The script is made from the argparse tree itself (:func:`commands`), so that every command,
option and choice the program accepts is completed, and a command added later is completed
without anyone remembering to. What is completed: subcommands, options (each level's own),
the values of options and arguments with choices (``--role``, ``--log-level``), and file
names where an argument is a path; device IDs and folder labels are not (they would need the
daemon, and a completion must answer at once).

bash gets a completion function; zsh runs the same one through its ``bashcompinit`` (zsh's
own emulation of bash completion); fish gets ``complete`` lines with each command's help.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path

SHELLS = ["bash", "zsh", "fish"]


@dataclass
class Value:
    """What an option's value or a positional argument is: a choice, a path, or free text."""

    choices: list[str] = field(default_factory=list)
    path: bool = False


@dataclass
class Option:
    flags: list[str]
    help: str
    #: None for a flag that takes no value.
    value: Value | None


@dataclass
class Command:
    """One level of the command tree: ``words`` are the subcommands that lead to it."""

    words: list[str]
    help: str
    options: list[Option] = field(default_factory=list)
    positionals: list[tuple[Value, bool]] = field(default_factory=list)  # (value, repeats)
    subcommands: dict[str, Command] = field(default_factory=dict)


def commands(parser: argparse.ArgumentParser, words: list[str] | None = None) -> Command:
    """The command tree below ``parser``."""
    command = Command(words or [], parser.description or "")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                child = commands(sub, [*command.words, name])
                child.help = helps.get(name, "") or child.help
                command.subcommands[name] = child
        elif action.help == argparse.SUPPRESS:
            continue
        elif action.option_strings:
            takes_value = action.nargs != 0
            value = _value(action) if takes_value else None
            command.options.append(Option(list(action.option_strings), action.help or "", value))
        else:
            command.positionals.append((_value(action), action.nargs in ("+", "*")))
    return command


def _value(action: argparse.Action) -> Value:
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return Value(choices=[str(c) for c in action.choices])
    return Value(path=action.type is Path)


def walk(command: Command) -> list[Command]:
    """Every level of the tree, the root first."""
    found = [command]
    for child in command.subcommands.values():
        found.extend(walk(child))
    return found


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script for ``shell`` (one of :data:`SHELLS`)."""
    tree = commands(parser)
    program = parser.prog
    if shell == "bash":
        return _bash(program, tree)
    if shell == "zsh":
        return (
            f"# zsh completion for {program}: add to ~/.zshrc, after compinit:\n"
            f"#   source <({program} completion zsh)\n"
            "# zsh runs the bash completion through its own emulation of it (bashcompinit).\n"
            "autoload -U +X bashcompinit && bashcompinit\n" + _bash(program, tree)
        )
    if shell == "fish":
        return _fish(program, tree)
    raise ValueError(f"no completion for {shell!r}")


# -- bash ------------------------------------------------------------------------------------


def _sh(text: str) -> str:
    """``text`` as one single-quoted shell word."""
    return "'" + text.replace("'", "'\\''") + "'"


def _function(program: str) -> str:
    return "_" + re.sub(r"\W", "_", program)


def _bash(program: str, tree: Command) -> str:
    name = _function(program)
    levels, values, positionals = [], [], []
    for command in walk(tree):
        key = _sh(" ".join(command.words))
        flags = [f for o in command.options for f in o.flags]
        valued = [f for o in command.options if o.value is not None for f in o.flags]
        levels.append(
            f"        {key}) subs={_sh(' '.join(command.subcommands))} "
            f"opts={_sh(' '.join(flags))} valued={_sh(' '.join(valued))} ;;"
        )
        for option in command.options:
            if option.value is not None:
                pattern = "|".join(_sh(f"{' '.join(command.words)}:{f}") for f in option.flags)
                values.append(f"        {pattern}) {_bash_value(option.value)} ;;")
        for index, (value, repeats) in enumerate(command.positionals):
            pattern = _sh(f"{' '.join(command.words)}:{index}")
            if repeats:
                pattern = _sh(f"{' '.join(command.words)}:") + "*"
            positionals.append(f"        {pattern}) {_bash_value(value)} ;;")
    return f"""# bash completion for {program}, generated by `{program} completion bash`.
# Load it now with: source <({program} completion bash); for every shell:
#   {program} completion bash > ~/.local/share/bash-completion/completions/{program}

{name}_level() {{
    subs='' opts='' valued=''
    case "$1" in
{chr(10).join(levels)}
    esac
}}

{name}_value() {{
    case "$1" in
{chr(10).join(values)}
        *) COMPREPLY=() ;;
    esac
}}

{name}_positional() {{
    case "$1" in
{chr(10).join(positionals)}
        *) COMPREPLY=() ;;
    esac
}}

{name}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="" path="" word i npos=0 skip=0
    local subs opts valued IFS=$'\n'
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        if ((skip)); then skip=0; prev=""; continue; fi
        {name}_level "$path"
        if [[ $word == -* ]]; then
            if [[ " $valued " == *" $word "* ]]; then skip=1; prev="$word"; fi
        elif [[ " $subs " == *" $word "* ]]; then
            path="${{path:+$path }}$word"
            npos=0
        else
            npos=$((npos + 1))
        fi
    done
    {name}_level "$path"
    COMPREPLY=()
    if ((skip)); then
        {name}_value "$path:$prev"
    elif [[ $cur == -* ]]; then
        COMPREPLY=($(IFS=' '; compgen -W "$opts" -- "$cur"))
    elif [[ -n $subs ]]; then
        COMPREPLY=($(IFS=' '; compgen -W "$subs" -- "$cur"))
    else
        {name}_positional "$path:$npos"
    fi
}}

complete -F {name} {program}
"""


def _bash_value(value: Value) -> str:
    if value.choices:
        return f'COMPREPLY=($(IFS=" "; compgen -W {_sh(" ".join(value.choices))} -- "$cur"))'
    if value.path:
        return 'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur"))'
    return "COMPREPLY=()"


# -- fish ------------------------------------------------------------------------------------


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish(program: str, tree: Command) -> str:
    name = _function(program)
    subs, valued, lines = [], [], []
    for command in walk(tree):
        key = _fish_quote(" ".join(command.words))
        if command.subcommands:
            words = " ".join(command.subcommands)
            subs.append(f"        case {key}\n            printf '%s\\n' {words}")
        flags = [f for o in command.options if o.value is not None for f in o.flags]
        if flags:
            valued.append(f"        case {key}\n            printf '%s\\n' {' '.join(flags)}")
        at = f"-n {_fish_quote(f'{name}_at {_fish_quote(chr(32).join(command.words))}')}"
        for word, child in command.subcommands.items():
            lines.append(
                f"complete -c {program} {at} -f -a {_fish_quote(word)} "
                f"-d {_fish_quote(_short(child.help))}"
            )
        for option in command.options:
            spec = []
            for flag in option.flags:
                spec.append(f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}")
            if option.value is None:
                kind = ""
            elif option.value.choices:
                kind = f" -x -a {_fish_quote(' '.join(option.value.choices))}"
            elif option.value.path:
                kind = " -r -F"
            else:
                kind = " -x"
            lines.append(
                f"complete -c {program} {at} {' '.join(spec)}{kind} "
                f"-d {_fish_quote(_short(option.help))}"
            )
        for value, _repeats in command.positionals:
            if value.choices:
                lines.append(
                    f"complete -c {program} {at} -f -a {_fish_quote(' '.join(value.choices))}"
                )
            elif value.path:
                lines.append(f"complete -c {program} {at} -F")
    nl = "\n"
    return f"""# fish completion for {program}, generated by `{program} completion fish`.
# Install it with: {program} completion fish > ~/.config/fish/completions/{program}.fish

function {name}_subcommands
    switch $argv[1]
{nl.join(subs)}
    end
end

function {name}_valued
    switch $argv[1]
{nl.join(valued)}
    end
end

# The subcommands typed so far ("folder add"), skipping options and their values.
function {name}_path
    set -l tokens (commandline -opc)
    set -e tokens[1]
    set -l path ''
    set -l skip 0
    for token in $tokens
        if test $skip = 1
            set skip 0
            continue
        end
        if string match -q -- '-*' $token
            if contains -- $token ({name}_valued "$path")
                set skip 1
            end
        else if contains -- $token ({name}_subcommands "$path")
            set path (string trim -- "$path $token")
        end
    end
    echo $path
end

function {name}_at
    set -l path ({name}_path)
    test "$path" = "$argv[1]"
end

complete -c {program} -f
{nl.join(lines)}
"""


def _short(text: str) -> str:
    """A help text cut to its first clause, as fish shows it beside the word."""
    first = re.split(r"[:;(]", text, maxsplit=1)[0].strip()
    return first or text

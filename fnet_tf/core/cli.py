"""Running a ``main(argv)`` as a command-line tool with absl flags.

User mistakes (``UserError``, bad flag values) become one line on stderr and exit code 2;
``--debug`` shows the traceback instead.
"""
import signal
import sys

from absl import app, flags, logging

from fnet_tf.core.errors import UserError
from fnet_tf.core.wording import count  # noqa: F401  (cli.count: the commands' spelling)

# The define_* helpers below define flags for the command that calls them: absl then lists
# them under that command's --help, not under this module.
flags.disclaim_key_flags()

flags.DEFINE_bool("debug", False, "Show the full traceback of an error instead of one line.")



def define_trust_model_code():
    """``--trust_model_code`` for the CLIs that load a user's Keras model (defined once per
    process, however many of them are imported)."""
    if "trust_model_code" not in flags.FLAGS:
        flags.DEFINE_bool("trust_model_code", False, "Load a Keras model even if it holds Python "
                          "code (a Lambda or custom layer) or a SavedModel with file ops. Only "
                          "for files you made: such a file runs its code on this machine.")
    else:  # another command defined it first: list it under this one's --help too
        flags.declare_key_flag("trust_model_code")


def _fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(UserError.exit_code)


HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def _flag_line(flag):
    import textwrap

    name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
    if flag.default is None:
        default = ""
    elif flag.boolean:
        default = f" (default: {str(flag.default).lower()})"
    else:
        shown = ",".join(map(str, flag.default)) if isinstance(flag.default, list) else flag.default
        default = f" (default: {shown})"
    text = " ".join(flag.help.split())
    return "\n".join(textwrap.wrap(f"{name}: {text}{default}", 96, initial_indent="  ",
                                    subsequent_indent="      "))


def help_text(module, usage="", common=()):
    """The flags a command defines (absl's own --help lists none when the command runs as a
    console script, whose main module is a wrapper), ``common`` ones first, then the rest in
    alphabetical order, then the flags every command takes."""
    doc = (sys.modules[module].__doc__ or "").strip() if module in sys.modules else ""
    own = {f.name: f for f in flags.FLAGS.get_key_flags_for_module(module)}
    if module != "__main__":
        own.update({f.name: f for f in flags.FLAGS.get_key_flags_for_module("__main__")})
    lines = [doc.split("\n\n")[0] if doc else "", ""] if doc else []
    if usage:
        lines += [f"usage: {usage}", ""]
    first = [own[name] for name in common if name in own]
    rest = sorted((f for name, f in own.items() if name not in common), key=lambda f: f.name)
    if first:
        lines += ["Common flags:"] + [_flag_line(f) for f in first] + [""]
    if rest:
        lines += [("More flags:" if first else "Flags:")] + [_flag_line(f) for f in rest] + [""]
    lines.append("Every command also takes --flagfile FILE (flags from a file) and --debug "
                 "(full tracebacks); --helpfull lists TensorFlow's and absl's own flags too.")
    return "\n".join(lines)


def _parse_flags(argv, module, usage, common):
    if any(arg in ("--help", "-help", "-h", "-?", "--helpshort") for arg in argv[1:]):
        try:
            print(help_text(module, usage, common))
        except BrokenPipeError:  # `fnet-train --help | head`
            pass
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(f"{e} (see --help)")
    except SystemExit as e:  # absl exits 1 after printing --helpfull; asking is no error
        if e.code == 1 and any(arg in HELP_FLAGS for arg in argv[1:]):
            sys.exit(0)
        raise


def _note_interrupts():
    """A list that gets an entry at each Ctrl-C (SIGINT still raises KeyboardInterrupt as
    Python's own handler does); left alone where SIGINT is ignored or handled already."""
    seen = []
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        def on_sigint(signum, frame):
            seen.append(signum)
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_sigint)
    return seen


def run(main, usage="", common=()):
    """``app.run(main)``, with UserError turned into a one-line message and exit code 2, and a
    ``--help`` that lists the command's flags (``help_text``: ``common`` first)."""

    def guarded(argv):
        logging.set_verbosity(logging.WARNING)  # TF's per-checkpoint INFO lines are noise here
        interrupted = _note_interrupts()
        try:
            return main(argv)
        except UserError as e:
            if flags.FLAGS.debug:
                raise
            _fail(e)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except Exception:  # noqa: BLE001
            # a Ctrl-C inside TensorFlow's Python code (building a model, tracing a function)
            # can surface as another exception from the state it left half-made
            if interrupted and not flags.FLAGS.debug:
                print("interrupted", file=sys.stderr)
                sys.exit(130)
            raise

    app.run(guarded, flags_parser=lambda argv: _parse_flags(argv, main.__module__, usage, common))


def entry_point(main, usage="", common=()):
    """The console command (``setup.py``'s entry points) that runs ``main`` like ``run``."""
    return lambda: run(main, usage, common)

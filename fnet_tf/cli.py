"""Running a ``main(argv)`` as a command-line tool with absl flags.

User mistakes (``UserError``, bad flag values) become one line on stderr and exit code 2;
``--debug`` shows the traceback instead.
"""
import sys

from absl import app, flags, logging

from fnet_tf.errors import UserError

flags.DEFINE_bool("debug", False, "Show the full traceback of an error instead of one line.")


def _fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(UserError.exit_code)


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(f"{e} (see --helpshort)")


def run(main):
    """``app.run(main)``, with UserError turned into a one-line message and exit code 2."""

    def guarded(argv):
        logging.set_verbosity(logging.WARNING)  # TF's per-checkpoint INFO lines are noise here
        try:
            return main(argv)
        except UserError as e:
            if flags.FLAGS.debug:
                raise
            _fail(e)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    app.run(guarded, flags_parser=_parse_flags)

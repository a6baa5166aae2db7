"""The schemes' own options as command-line flags: every registered scheme declares its
``Option``s (``base.Option``), ``define_flags`` turns them into absl flags of the calling
command, and ``configured_scheme`` builds the chosen scheme from their values, so a new scheme
(or a new setting of one) touches no command."""
import os

from absl import flags

from fnet_tf.quantization.registry import SCHEMES, get_scheme
from fnet_tf.quantization.schemes import list_schemes

# the flags belong to the command that calls define_flags: absl lists them under its --help
flags.disclaim_key_flags()

DEFINERS = {int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}


def declared():
    """[(scheme name, Option)] over every registered scheme, in name order."""
    return [(name, option) for name in list_schemes()
            for option in SCHEMES[name].declared_options]


def define_flags():
    """``--qat_scheme`` (the registered names) and one flag per scheme option."""
    flags.DEFINE_string("qat_scheme", "int8", "QAT scheme: " + ", ".join(
        name for name in list_schemes() if SCHEMES[name].qat) + ".")
    for name, option in declared():
        DEFINERS[option.kind](option.name, option.default,
                              f"--qat_scheme {name}: {option.help}.")


def values(flag_values):
    """``{option: value}`` of every declared option as the flags hold it (paths made
    absolute, so a run records where its files are)."""
    got = {}
    for _, option in declared():
        value = flag_values[option.name].value
        got[option.name] = (os.path.abspath(value) if option.is_path and value else value)
    return got


def configured_scheme(name, flag_values):
    """The registered scheme ``name`` with its own options from the flags (UserError if
    unknown or if a value is out of range)."""
    return get_scheme(name).configured(**values(flag_values))

"""The released models: ``fnet_tf.zoo.load("factorizenet-l3")`` and ``fnet-zoo list``
(``python -m fnet_tf.zoo list``); ``fnet-zoo pareto [OUT_DIR]`` draws them all on one Pareto
plot with the MLPerf peer (``results/zoo/`` by default).

The library is ``fnet_tf.release.zoo``; its public functions are importable from here too
(``import fnet_tf.zoo as z; z.load(name)``, ``z.keras_model(name)``), as documented.
"""
import sys

from fnet_tf.core import cli
from fnet_tf.core.errors import UserError
from fnet_tf.release import front as zoo_front
from fnet_tf.release.zoo import (PREFIX, keras_model, load, metrics, names,  # noqa: F401  (the API)
                                 released_name, table_markdown, zoo_dir)


def main(argv):
    args = argv[1:]
    if args == ["list"]:
        if not names():
            print(f"no released models in {zoo_dir()}", file=sys.stderr)
        else:
            print(table_markdown())
        return 0
    if len(args) == 2 and args[0] == "path":
        print(load(args[1]))
        return 0
    if args and args[0] == "pareto" and len(args) <= 2:
        zoo_front.write_released(args[1] if len(args) == 2 else "results/zoo")
        return 0
    raise UserError("usage: fnet-zoo list | path NAME | pareto [OUT_DIR] "
                    "(or python -m fnet_tf.zoo ...)")


console = cli.entry_point(  # the fnet-zoo command
    main, usage="fnet-zoo list | path NAME | pareto [OUT_DIR]   (python -m fnet_tf.zoo)")

if __name__ == "__main__":
    console()

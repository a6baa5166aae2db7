"""A recipe search by a library: Optuna's TPE sampler proposes, the executor trains.

``fnet-tune --search tpe --space lr=0.02:0.5:log --space label_smoothing=0:0.2 --trials 12``
asks Optuna's TPE sampler (seeded) for ``trials_at_once`` settings at a time, trains them as one
batch of executor jobs (so a Ray cluster trains a batch side by side), and tells the sampler
each trial's last-epoch validation accuracy; the test split is never scored. Trials are run
directories ``OUT/trials/search-NNN/`` like the grid's, and ``OUT/search_trials.json`` records
each one's sampled settings before it trains, so a killed search resumes: finished trials are
told to a new study as they were, unfinished ones train on from their last epoch, then the
sampler asks for the rest. (Optuna's pruners want per-epoch reports from inside a trial; the
trials here are separate processes on any node, so each trains its whole budget.)
"""
import json
import os

from fnet_tf.core import fileio
from fnet_tf.core.errors import UserError
from fnet_tf.search import recipe_grid

PREFIX = "search-"
RECORD = "search_trials.json"


def import_optuna():
    try:
        import optuna  # noqa: PLC0415  (optional: loaded only for --search tpe)
    except ImportError:
        raise UserError("--search tpe needs Optuna: pip install \"fnet_tf[search]\" (or pip "
                        "install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def distributions(optuna, space):
    """Optuna's distribution for each ``recipe_grid.Range``."""
    found = {}
    for name, r in space.items():
        if r.choices:
            found[name] = optuna.distributions.CategoricalDistribution(list(r.choices))
        elif isinstance(r.low, int):
            found[name] = optuna.distributions.IntDistribution(r.low, r.high, log=r.log)
        else:
            found[name] = optuna.distributions.FloatDistribution(r.low, r.high, log=r.log)
    return found


def _inside(r, value):
    return value in r.choices if r.choices else r.low <= value <= r.high


def shown(params):
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted(params.items()))


def read_record(out):
    path = os.path.join(out, RECORD)
    if not os.path.isfile(path):
        return {}
    return json.loads(fileio.read_text(path, fileio.JSON_LIMIT))


def as_trial(name, params, base):
    """A search trial in ``recipe_grid.plan_trials``' form (name, setting, value, settings)."""
    return name, "search", shown(params), {**base, **params}


def recorded_trials(base, out):
    """Every trial the search in ``out`` has proposed, in that form."""
    return [as_trial(name, params, base) for name, params in read_record(out).items()]


def search(space, base, n_trials, at_once, seed, out, run_batch):
    """Run the search; ``run_batch(trials)`` trains ``[(name, setting, value, settings)]``
    (the executor). Returns every trial of the search in that form, for the report."""
    optuna = import_optuna()
    dists = distributions(optuna, space)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    record = read_record(out)
    for name, params in record.items():
        if set(params) != set(space) or not all(_inside(space[k], v) for k, v in params.items()):
            raise UserError(f"{out} holds a search over another --space ({name}: "
                            f"{shown(params)}): pass a new --out for this one")

    def result(name):
        return recipe_grid.trial_result(os.path.join(out, "trials", name))

    def tell(asked, name, params):
        found = result(name)
        if found is None:
            raise UserError(f"trial {name} did not finish: run the same command to resume it")
        if asked is None:
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions=dists, value=found["val_accuracy"]))
        else:
            study.tell(asked, found["val_accuracy"])

    # recorded trials: the finished ones are told as they were, the rest train on first
    pending = []
    for name, params in record.items():
        if result(name) is not None:
            tell(None, name, params)
        else:
            pending.append((None, name, params))
    while True:
        room = n_trials - len(study.trials) - len(pending)
        batch, pending = pending, []
        while len(batch) < at_once and room > 0:
            asked = study.ask(dists)
            name = f"{PREFIX}{len(record):03d}"
            record[name] = asked.params
            batch.append((asked, name, asked.params))
            room -= 1
        if not batch:
            break
        fileio.write_json(os.path.join(out, RECORD), record)  # before any of them trains
        run_batch([as_trial(name, params, base) for _, name, params in batch])
        for asked, name, params in batch:
            tell(asked, name, params)
    return recorded_trials(base, out)

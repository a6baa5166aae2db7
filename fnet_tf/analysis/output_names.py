"""Output folder names for several analyzed models: one folder each, never shared."""
import os


def unique_names(targets):
    """Targets whose names clash take as many of their path's last folders as tell them apart
    (models/a/model_int8.tflite -> a; sweeps/x/l3/finetune and sweeps/x/frost/finetune ->
    l3-finetune and frost-finetune): each one's outputs go to OUT/<name>/."""
    def parts(t):  # the target's own name last, then its folders upwards
        folder = os.path.abspath(t.path if t.run is not None else os.path.dirname(t.tflite))
        names = [p for p in folder.split(os.sep) if p]
        return names if t.run is not None else names + [t.name]

    clashing = [t for t in targets if [u.name for u in targets].count(t.name) > 1]
    paths = {id(t): parts(t) for t in clashing}  # before any is renamed
    for t in clashing:
        mine = paths[id(t)]
        others = [paths[id(u)] for u in clashing if u is not t]
        for depth in range(1, len(mine) + 1):
            tail = mine[-depth:]
            if all(other[-depth:] != tail for other in others):
                break
        if t.run is None and tail[-1] == t.name and len(tail) > 1:
            tail = tail[:-1]  # models/a/model_int8.tflite: the folder alone says it
        t.name = "-".join(tail)
    return targets

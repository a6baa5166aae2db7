"""Pareto fronts: which points no other point beats. Pure data, imported by the reports and
the plots alike (so plots.py draws what it is given and imports no analysis)."""


def pareto_front(points):
    """Indices of the (cost, accuracy) points no other point beats (lower-or-equal cost,
    higher accuracy), in order of cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -float("inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front

"""The console's plots as SVG documents, drawn on the server by matplotlib.

Why server-side SVG rather than a JavaScript chart library: matplotlib is already the project's
plotting library (the run report's figures are reused as they are, so the console and
``report.html`` draw a run the same way), nothing has to be vendored or kept up to date, the
pages work with scripts off, and a plot is an ``<img>`` the live page can reload by its URL.
"""

from __future__ import annotations

import io
import threading
from datetime import datetime, timedelta
from typing import Any

from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from federation.server.report_figures import COLORS, epsilon_figure, new_figure
from federation.server.report_figures import rounds_figure as report_rounds_figure

_LOCK = threading.Lock()  # matplotlib's text and font caches are not meant for threads


def svg(figure: Figure | None) -> bytes:
    """The figure as an SVG document (an empty, labelled one when there is nothing to draw)."""
    with _LOCK:
        if figure is None:
            figure = new_figure(6.0, 1.0, left=0.2, bottom=0.2)
            figure.text(0.5, 0.5, "nothing to plot yet", ha="center", va="center", color="#555")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def lifetime_figure(series: dict[str, Any]) -> Figure | None:
    """The site's lifetime epsilon after each release, over time, against its budget; each
    run's releases in a colour of their own, so one sees which run took how much."""
    points, budget = series["points"], series["budget"]
    if not points:
        return None
    figure = new_figure(9.0, 3.4, left=0.7, top=0.2)
    figure.subplots_adjust(right=1 - 2.5 / 9.0)  # the legend (one line a run) on the right
    axes = figure.subplots()
    when = [datetime.fromtimestamp(p["when"]).astimezone() for p in points]
    epsilon = [p["epsilon"] for p in points]
    span = max((when[-1] - when[0]) * 0.05, timedelta(minutes=1))
    axes.step(  # from 0 before the first release, to the last value after the last one
        [when[0] - span, *when, when[-1] + span],
        [0.0, *epsilon, epsilon[-1]],
        where="post",
        color="#444",
        linewidth=1.2,
        zorder=1,
    )
    runs = list(dict.fromkeys(p["run_id"] for p in points))
    for i, run in enumerate(runs):
        own = [(w, p) for w, p in zip(when, points, strict=True) if p["run_id"] == run]
        axes.scatter(
            [w for w, _ in own],
            [p["epsilon"] for _, p in own],
            color=COLORS[i % len(COLORS)],
            s=22,
            zorder=2,
            label=f"{own[0][1]['study']}\nrun {run[:12]}",
        )
    top = max(epsilon)
    if budget is not None:
        label = f"lifetime budget ε = {budget:g}"
        axes.axhline(budget, color="#9b1c13", linestyle="--", label=label)
        top = max(top, budget)
    axes.set(ylabel="lifetime ε spent", ylim=(0, top * 1.12))
    axes.set_xlim(when[0] - span, when[-1] + span)
    locator = AutoDateLocator(tz=when[0].tzinfo)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=when[0].tzinfo))
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False, fontsize="small")
    axes.grid(alpha=0.3)
    return figure


def rounds_figure(rounds: list[dict[str, Any]]) -> Figure | None:
    """Pooled AUROC (with its 95% CI band), AUPRC and scaled Brier per round, as in the report."""
    return report_rounds_figure(rounds)


def run_epsilon_figure(rounds: list[dict[str, Any]], target: float | None) -> Figure | None:
    """Each site's epsilon so far per round against the run's target, as in the report."""
    return epsilon_figure(rounds, target)

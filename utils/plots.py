"""Figures of evaluation results, drawn headless with matplotlib's Agg canvas.

The figures are built on ``matplotlib.figure.Figure`` directly (not ``pyplot``), so nothing here touches
global matplotlib state or needs a display.
"""
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from utils.files import atomic_write


def new_figure(width_inches, height_inches):
    """A figure with an Agg canvas attached, and its single axes."""
    figure = Figure(figsize=(width_inches, height_inches), layout='constrained')
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def save_figure(figure, path, dpi=120):
    """Write ``figure`` to ``path`` atomically (format from the extension: ``.png``, ``.pdf``, ...)."""
    with atomic_write(path, 'wb') as f:
        figure.savefig(f, format=os.path.splitext(path)[1].lstrip('.') or 'png', dpi=dpi)
    return path


def plot_confusion_matrix(matrix, class_names, path, title=''):
    """Draw a confusion matrix as row-normalised percentages with the counts, and save it.

    Args:
        matrix: ``[K, K]`` counts (row = true class, column = predicted), a tensor, array or nested list.
        class_names: K names for the axes.
        path: the image file to write (``.png``).
        title: the figure title.

    Returns:
        ``path``.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    support = counts.sum(axis=1, keepdims=True)
    percent = 100.0 * counts / np.maximum(support, 1)
    num_classes = len(class_names)
    side = 1.2 + 0.75 * num_classes
    figure, axes = new_figure(side + 1.5, side)
    image = axes.imshow(percent, cmap='Blues', vmin=0, vmax=100)
    figure.colorbar(image, ax=axes, label='% of the true class')
    axes.set(xticks=range(num_classes), yticks=range(num_classes), xlabel='predicted class',
             ylabel='true class', title=title)
    axes.set_xticklabels(class_names, rotation=45, ha='right')
    axes.set_yticklabels(class_names)
    for row in range(num_classes):
        for column in range(num_classes):
            colour = 'white' if percent[row, column] > 50 else 'black'
            axes.text(column, row, f'{percent[row, column]:.0f}\n({counts[row, column]})', ha='center',
                      va='center', fontsize=7, color=colour)
    return save_figure(figure, path)


# ----------------------------------------------------------------------------------------------------
# Per-class bars of the heads (evaluation recall, prediction probabilities) and prediction pictures
# ----------------------------------------------------------------------------------------------------
HEAD_COLOURS = {'global': 'tab:blue', 'local': 'tab:orange', 'fused': 'tab:green'}
# Prediction pictures, in inches: one frame, the probability chart, a class row of the chart, the title.
FRAME_INCHES = 1.0
CHART_INCHES = 4.5
CLASS_ROW_INCHES = 0.35
TITLE_INCHES = 0.8
PREDICTION_DPI = 100


def draw_class_bars(axes, values_by_head, class_names, xlabel, legend_labels=None):
    """Horizontal bars, one group per class (in class order, top down) and one bar per head.

    Args:
        axes: the matplotlib axes to draw into.
        values_by_head: dict head -> K values; None (or nan) draws no bar but ``n/a``.
        class_names: K names for the groups.
        xlabel: the value axis label.
        legend_labels: dict head -> legend text (default: the head's name).
    """
    heads = list(values_by_head)
    bar_height = 0.8 / len(heads)
    rows = np.arange(len(class_names))
    for number, head in enumerate(heads):
        values = np.array([np.nan if value is None else value for value in values_by_head[head]], dtype=float)
        positions = rows + (number - (len(heads) - 1) / 2) * bar_height
        axes.barh(positions, np.nan_to_num(values), bar_height, color=HEAD_COLOURS.get(head),
                  label=(legend_labels or {}).get(head, head))
        for position in positions[np.isnan(values)]:
            axes.text(0, position, ' n/a', va='center', fontsize=6)
    axes.set(yticks=rows, xlabel=xlabel)
    axes.set_yticklabels(class_names, fontsize=8)
    axes.invert_yaxis()  # class 0 on top, as in the tables
    # above the bars, where no bar can hide it
    axes.legend(fontsize=7, loc='lower center', bbox_to_anchor=(0.5, 1.0), ncols=len(heads), frameon=False)


def plot_recall_bars(heads, class_names, path, title=''):
    """Draw the per-class recall of every head as grouped bars, with UAR and WAR in the legend, and save.

    Args:
        heads: head -> :func:`utils.metrics.classification_report` dict (``per_class_recall`` in
            percent, None for a class absent from the ground truth; ``UAR``, ``WAR``).
        class_names: K names.
        path: the image file to write (``.png``).
        title: the figure title.

    Returns:
        ``path``.
    """
    figure, axes = new_figure(7.0, 1.2 + 0.25 * len(heads) * len(class_names))
    draw_class_bars(axes, {head: report['per_class_recall'] for head, report in heads.items()}, class_names,
                    'recall of the class (%)',
                    {head: f'{head}: UAR {report["UAR"]:.1f}, WAR {report["WAR"]:.1f}'
                     for head, report in heads.items()})
    axes.set_xlim(0, 100)
    figure.suptitle(title)  # above the legend
    axes.grid(axis='x', alpha=0.3)
    return save_figure(figure, path)


def save_evaluation_plots(heads, class_names, prefix, title=''):
    """The pictures of one evaluation: ``<prefix>.confusion_<head>.png`` per head (row-normalised
    confusion matrix) and ``<prefix>.recall.png`` (per-class recall bars of all heads).

    Args:
        heads: head -> :func:`utils.metrics.classification_report` dict.
        class_names: K names.
        prefix: path prefix, e.g. the result JSON's path without ``.json``.
        title: common start of the figure titles.

    Returns:
        list of the written paths.
    """
    paths = [plot_confusion_matrix(report['confusion_matrix'], class_names, f'{prefix}.confusion_{head}.png',
                                   f'{title} {head} head'.strip())
             for head, report in heads.items()]
    paths.append(plot_recall_bars(heads, class_names, f'{prefix}.recall.png', title))
    return paths


def prediction_figure_size(num_snippets, frames_per_snippet, num_classes):
    """``(width, height)`` in inches of :func:`plot_prediction`'s picture (times ``PREDICTION_DPI``: pixels)."""
    frames_height = num_snippets * FRAME_INCHES
    chart_height = num_classes * CLASS_ROW_INCHES + 1.0
    return frames_per_snippet * FRAME_INCHES + CHART_INCHES, max(frames_height, chart_height) + TITLE_INCHES


def _draw_snippet_frames(figure, grid, frames, relevance, erased, frame_indices):
    """The frames in snippet rows; each row labelled with its relevance, erased rows dimmed and in red."""
    num_snippets = len(relevance)
    frames_per_snippet = len(frames) // num_snippets
    images = frames.permute(0, 2, 3, 1).cpu().numpy()  # [T, H, W, 3] uint8
    for snippet in range(num_snippets):
        colour = 'red' if erased[snippet] else 'black'
        for column in range(frames_per_snippet):
            frame = snippet * frames_per_snippet + column
            axes = figure.add_subplot(grid[snippet, column])
            axes.imshow(images[frame], alpha=0.35 if erased[snippet] else 1.0, interpolation='nearest')
            axes.set(xticks=[], yticks=[])
            if frame_indices is not None:
                axes.set_title(f'frame {frame_indices[frame]}', fontsize=6, pad=2)
            for spine in axes.spines.values():
                spine.set(color=colour, linewidth=2 if erased[snippet] else 0.5)
            if column == 0:
                state = '\nERASED' if erased[snippet] else ''
                axes.set_ylabel(f'snippet {snippet + 1}\nr = {relevance[snippet]:.3f}{state}', fontsize=7,
                                color=colour)


def plot_prediction(frames, relevance, erased, probabilities, class_names, path, title='', frame_indices=None):
    """Draw what a prediction rests on: the frames in snippet rows with their relevance and erasing, and
    the class probabilities of the heads; save the picture.

    Args:
        frames: uint8 ``[T, 3, H, W]``, the frames of one view (T divisible by S).
        relevance: S snippet relevance weights.
        erased: S booleans, True for the snippets the model erased.
        probabilities: dict head -> K class probabilities.
        class_names: K names.
        path: the image file to write (``.png``), of :func:`prediction_figure_size` x ``PREDICTION_DPI``.
        title: the figure title.
        frame_indices: T source-frame numbers to label the frames with, or None.

    Returns:
        ``path``.
    """
    num_snippets, num_frames = len(relevance), len(frames)
    frames_per_snippet = num_frames // num_snippets
    figure = Figure(figsize=prediction_figure_size(num_snippets, frames_per_snippet, len(class_names)),
                    layout='constrained')
    FigureCanvasAgg(figure)
    width_ratios = [FRAME_INCHES] * frames_per_snippet + [CHART_INCHES]
    grid = figure.add_gridspec(num_snippets, frames_per_snippet + 1, width_ratios=width_ratios)
    _draw_snippet_frames(figure, grid, frames, relevance, erased, frame_indices)
    chart = figure.add_subplot(grid[:, frames_per_snippet])
    draw_class_bars(chart, probabilities, class_names, 'probability (mean over the test views)')
    chart.set_xlim(0, 1)
    figure.suptitle(title, fontsize=8)
    return save_figure(figure, path, dpi=PREDICTION_DPI)


# ----------------------------------------------------------------------------------------------------
# Benchmark pictures: a campaign's folds and seeds, cross-dataset transfer
# ----------------------------------------------------------------------------------------------------
SEED_COLOUR = 'tab:blue'
PUBLISHED_COLOUR = 'tab:red'
# Horizontal spread of a row's seed points, in x units, so that equal values stay visible.
SEED_JITTER = 0.15


def _draw_seed_points(axes, position, values):
    """One row's per-seed values as points, and their mean ± standard deviation (n - 1) as an error bar."""
    values = np.asarray(values, dtype=float)
    offsets = np.linspace(-SEED_JITTER, SEED_JITTER, len(values)) if len(values) > 1 else np.zeros(1)
    axes.scatter(position + offsets, values, s=14, color=SEED_COLOUR, alpha=0.6, zorder=2)
    spread = values.std(ddof=1) if len(values) > 1 else 0.0
    axes.errorbar(position, values.mean(), yerr=spread, fmt='_', markersize=16, color='black', capsize=5,
                  zorder=3)


def _draw_metric_panel(axes, metric, values, published, row_labels):
    """One metric of every row: seed points, mean ± std, and the published figure where there is one."""
    for position, label in enumerate(row_labels):
        if values.get(label):
            _draw_seed_points(axes, position, values[label])
        if published.get(label) is not None:
            axes.scatter(position, published[label], marker='*', s=90, color=PUBLISHED_COLOUR, zorder=4)
    axes.set(xticks=range(len(row_labels)), title=metric, xlim=(-0.6, len(row_labels) - 0.4), xlabel='fold')
    axes.set_xticklabels(row_labels)
    axes.grid(axis='y', alpha=0.3)


def plot_campaign_results(values, published, row_labels, path, title=''):
    """Draw a campaign's figures per fold: each seed's value (points), their mean ± standard deviation
    (black bar) and the published figure (red star), one panel per metric; save the picture.

    Args:
        values: metric -> row label -> per-seed values (percent); a row without values draws no points.
        published: metric -> row label -> the published figure or None (e.g. ``UAR_release`` -> the
            published UAR, which the release computed the same way).
        row_labels: the x positions, in order (fold labels, then ``Avg``).
        path: the image file to write (``.png``).
        title: the figure title.

    Returns:
        ``path``.
    """
    metrics = list(values)
    figure = Figure(figsize=(1.6 + 0.55 * len(row_labels) * len(metrics), 3.8), layout='constrained')
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    for axes, metric in zip(panels, metrics):
        _draw_metric_panel(axes, metric, values[metric], published.get(metric, {}), row_labels)
    panels[0].set_ylabel('percent')
    legend = [Line2D([], [], marker='o', linestyle='', color=SEED_COLOUR, alpha=0.6, label='one seed'),
              Line2D([], [], marker='_', markersize=12, color='black', label='mean ± std over seeds')]
    if any(value is not None for figures in published.values() for value in figures.values()):
        legend.append(Line2D([], [], marker='*', markersize=10, linestyle='', color=PUBLISHED_COLOUR,
                             label='published'))
    figure.legend(handles=legend, loc='outside lower center', ncols=len(legend), fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)


def plot_transfer_grid(grids, row_labels, column_labels, path, title=''):
    """Draw metrics as heatmaps of trained-on (rows) x tested-on (columns) pairs, one panel per metric;
    save the picture.

    Args:
        grids: metric -> rows of values in percent (None: no figure, drawn as ``-``).
        row_labels, column_labels: the names of the rows (trained on) and columns (tested on).
        path: the image file to write (``.png``).
        title: the figure title.

    Returns:
        ``path``.
    """
    width = 1.5 + 0.9 * len(column_labels)
    figure = Figure(figsize=(width * len(grids) + 0.8, 1.4 + 0.6 * len(row_labels)), layout='constrained')
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, len(grids), squeeze=False)[0]
    for axes, (metric, rows) in zip(panels, grids.items()):
        table = np.array([[np.nan if value is None else value for value in row] for row in rows], dtype=float)
        image = axes.imshow(np.ma.masked_invalid(table), cmap='Blues', vmin=0, vmax=100)
        for (row, column), value in np.ndenumerate(table):
            text = '-' if np.isnan(value) else f'{value:.1f}'
            colour = 'white' if value > 60 else 'black'  # nan compares False: black
            axes.text(column, row, text, ha='center', va='center', fontsize=8, color=colour)
        axes.set(xticks=range(len(column_labels)), yticks=range(len(row_labels)), title=metric,
                 xlabel='tested on', ylabel='trained on')
        axes.set_xticklabels(column_labels, rotation=30, ha='right')
        axes.set_yticklabels(row_labels)
    figure.colorbar(image, ax=list(panels), label='%', shrink=0.8)
    figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)

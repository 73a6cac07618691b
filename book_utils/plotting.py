"""The book's figure style: seaborn's clean theme at a modest resolution, so committed
outputs stay lean.

:func:`book_utils.setup` applies it; every chapter's figures go through
matplotlib/seaborn as usual.
"""

from __future__ import annotations

import matplotlib
import seaborn as sns

FIGURE_DPI = 100
FIGURE_SIZE = (6.4, 3.6)


def use_book_style() -> None:
    """Apply the book's theme: seaborn ``whitegrid``, colour-blind palette, 100-dpi
    figures of 6.4 x 3.6 in."""
    sns.set_theme(style="whitegrid", palette="colorblind", context="notebook")
    matplotlib.rcParams.update(
        {
            "figure.dpi": FIGURE_DPI,
            "savefig.dpi": FIGURE_DPI,
            "figure.figsize": FIGURE_SIZE,
        }
    )

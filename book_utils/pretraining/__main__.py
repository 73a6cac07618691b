"""``python -m book_utils.pretraining ...`` (also under ``torchrun -m`` and
``accelerate launch -m``): the command line of :mod:`book_utils.pretraining.cli`.

Chapter 3.2, book/03_pretraining/02_causal_lm.ipynb.
"""

from book_utils.pretraining.cli import main

if __name__ == "__main__":
    main()

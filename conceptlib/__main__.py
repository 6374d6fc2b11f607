"""``python -m conceptlib`` runs the CLI, so ``torchrun -m conceptlib`` works too."""

from conceptlib.cli import main

main()

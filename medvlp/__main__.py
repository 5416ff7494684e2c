"""``python -m medvlp`` (also what ``torchrun -m medvlp`` runs)."""

from medvlp.cli.main import main

main()

"""``python -m fusedloss.bench``: same as the ``fusedloss-bench`` console script."""
from . import main

raise SystemExit(main())

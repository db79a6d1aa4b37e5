"""``python -m aqueue._cli``: the ``aqueue`` command (the supervisor starts its worker
processes this way)."""

from .main import main

raise SystemExit(main())

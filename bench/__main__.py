"""``python -m bench``: see bench/cli.py and docs/PERFORMANCE.md."""

from bench.cli import main

raise SystemExit(main())

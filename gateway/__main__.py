"""`python -m gateway` is the `savepoint` command."""

from gateway.cli import main

raise SystemExit(main())

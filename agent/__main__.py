"""`python -m agent` is `dodo-outbox`."""

from agent.cli import main

main()

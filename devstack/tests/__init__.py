"""Tests of the local-stack tooling itself (run by `make test` and `make tooling`)."""

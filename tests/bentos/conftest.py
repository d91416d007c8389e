"""The service tests' fixtures (``stack``, ``oidc_issuer``, ``served``) live in
tests/conftest.py, which the CLI's tests share: one session, one server."""

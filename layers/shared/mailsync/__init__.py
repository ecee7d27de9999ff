"""Mailsync shared package: everything the Lambda handlers call.

Concerns by module: ``config`` (settings from the environment), ``observability``
(the single Logger/Tracer/Metrics), ``errors`` (domain errors and their HTTP shape),
``identity`` (who is calling, whom they may act on), ``crypto`` (KMS for mail
passwords), ``dal`` (every DynamoDB access), ``netguard`` (SSRF guard),
``mailbox`` (IMAP/POP3 protocol adapters), ``folders`` (pure folder-map rules),
``services`` (the use cases the handlers call).
"""

# One version for the package, the API document and the deployment (pyproject.toml repeats it;
# tests/unit/test_version.py keeps them equal).
__version__ = "1.0.0"

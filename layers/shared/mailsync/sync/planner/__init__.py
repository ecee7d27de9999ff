"""Every sync decision, pure: no I/O, no AWS, no IMAP. The engine, the pusher and the job runner
gather the inputs and carry out the result.

- ``folders``: how to sync a folder from its STATUS; the typed checkpoint and how it advances;
- ``messages``: per message, from (base as last agreed, server now, CRM pending) what to show,
  write and send; per batch, relinks, creates and bodies to fetch; detach reasons;
- ``ops``: per CRM operation apply / wait / fail, and what the CRM shows after;
- ``jobs``: whether a job runs, its deadlines, its outcome and the failure policy.
"""

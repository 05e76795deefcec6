"""Stage 5, send: the durable outbox and C-STORE delivery of the reports to the PACS."""

"""Micro-batch ingestion: stream or landing zone -> schema contract -> lake, exactly once.

- ``sources``: where records come from (landing-zone files with their ledger, Redis Streams);
- ``contract``: the spec's schema contract, every record accepted or quarantined with a reason;
- ``batches``: one micro-batch end to end (read, validate, write, manifest last, acknowledge);
- ``produce``: the replay producer (a dataset as a timestamped stream of events and late labels).
"""

"""Monitoring of the served model on live traffic.

- ``live``: drift and quality from the prediction log joined to the labels that arrive later;
  a breach publishes the retraining Asset;
- ``shadow``: the challenger's shadow answers against the champion's, into its model card.
"""

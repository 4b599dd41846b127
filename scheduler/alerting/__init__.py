"""Stage 3, alerting: merge and suppress candidates into alerts, deliver them through the outbox to the sinks, and render the report."""

"""Stage 1, collect: read osquery results, Zeek logs, the extension over Thrift and recordings into rows, with checkpoints."""

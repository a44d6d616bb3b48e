"""The `orch` command line: manifests, output formatting, `orch up`."""

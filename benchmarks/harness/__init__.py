"""What every benchmark shares: load, statistics, servers, data, provenance, output."""

"""Upstream model providers, each behind the one `Provider.send` seam."""

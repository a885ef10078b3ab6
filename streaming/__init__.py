"""Streaming side: the event and sample contracts, the pure join/aggregation core, and thin Faust agents."""

"""The inference runtime: records in, predictions and explanations out (``inference``), with concurrent requests
coalesced into engine calls (``batching``) and optional engine processes (``engine_pool``). No web framework."""

"""quota-router: pool ChatGPT/Codex accounts behind one mitmproxy."""

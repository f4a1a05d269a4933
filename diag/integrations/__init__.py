"""Framework callbacks over `diag.live.LiveSession`: `lightning`, `transformers`."""

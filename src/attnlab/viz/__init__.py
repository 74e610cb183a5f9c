"""Pictures of attention: arrays in -> Figure / HTML / text out (numpy + matplotlib only)."""

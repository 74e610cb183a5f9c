"""attnlab.inspect."""

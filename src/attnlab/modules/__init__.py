"""nn.Modules with parameters: multi-head, Bahdanau and Luong attention."""

"""The ``attnlab`` command line: thin subcommands that parse, call one library function, print."""

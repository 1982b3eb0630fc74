"""Config parsing, atomic I/O, one-line errors, paths and process defaults shared by every stage."""

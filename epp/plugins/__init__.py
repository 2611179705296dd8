"""In-tree plugins; `register_builtins` is the one explicit list of built-in plugin types."""

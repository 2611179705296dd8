"""Built-in pickers: turn the scored endpoints into an ordered target list (primary, then fallbacks)."""

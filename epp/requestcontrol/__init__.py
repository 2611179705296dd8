"""Everything between the wire and the scheduler: parse, rewrite, admit, pick candidates, schedule, hooks."""

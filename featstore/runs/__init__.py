"""Run folders: the typed record, kinds of run, writing, reading, artifacts and their safety checks."""

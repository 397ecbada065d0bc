"""The extraction loop (splits and their augmented copies) and its engines (local threads, Ray)."""

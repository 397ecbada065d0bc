"""The HDF5 feature store: layout, locking, reading, the crash-safe writer, compaction, checks, export."""

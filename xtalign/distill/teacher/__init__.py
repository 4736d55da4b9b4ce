"""The teacher room: `worker` (one forward into top-k, on the teacher's device), `source` (cache reads and
writes around a compute), `cache` (the on-disk teacher cache), `wire` (the packed form between processes)."""

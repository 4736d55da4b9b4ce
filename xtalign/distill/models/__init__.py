"""Models for the engine: the offline zoo (`zoo`, torch-free), loading (`load`, torch), naming a model
before loading it (`identity`, torch-free)."""

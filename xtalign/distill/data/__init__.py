"""The engine's data room: `batch` (what travels), `corpus` (documents → packed samples), `builder`
(samples → tokenized, cut and aligned `Batch`es), `pipeline` (seeded order, background workers, held-out)."""
